"""One place that turns an HTTP exchange into an HttpAnswer or an AmbiguousOutcome.

Outbound calls (ledger, providers, cascade-core) go through `OutboundHttp`, an
aiohttp session: a withdrawal makes five of them, and httpx spent about a
fifth of the API's CPU on them. Every failure to get an answer (a timeout, a
refused or dropped connection) is ambiguous: the call may have been applied.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from activities import strict_json
from activities.outcomes import AmbiguousOutcome, HttpAnswer
from engine import tracing


class OutboundHttp:
    """A kept-alive connection pool for the steps' calls; `timeout_s` per call unless
    a call names its own. Open it inside the running event loop."""

    def __init__(self, timeout_s: float, connections: int = 100) -> None:
        self._timeout_s = timeout_s
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                json_serialize=json.dumps,
                auto_decompress=False,  # our peers send JSON as is; no surprise bodies
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes, str | None]:
        """(status, body, Retry-After header)."""
        limit = aiohttp.ClientTimeout(total=timeout_s or self._timeout_s)
        async with self._open().request(
            method, url, json=json, headers=headers, timeout=limit, allow_redirects=False
        ) as response:
            return response.status, await response.read(), response.headers.get("Retry-After")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def call(client: OutboundHttp, method: str, url: str, **kwargs: Any) -> HttpAnswer:
    """With tracing on, the call is a client span, and its context is the
    `traceparent` on the wire (the ledger and providers can join the trace)."""
    where = urlsplit(url)
    attributes = {"http.request.method": method, "server.address": where.hostname}
    with tracing.client_span(f"{method} {where.path}", attributes) as span:
        if tracing.enabled():
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **tracing.outbound_headers()}
        answer = await _call(client, method, url, **kwargs)
        span.set_attribute("http.response.status_code", answer.status)
        return answer


async def _call(client: OutboundHttp, method: str, url: str, **kwargs: Any) -> HttpAnswer:
    try:
        status, content, retry_after = await client.request(method, url, **kwargs)
    except TimeoutError:
        raise AmbiguousOutcome("timeout") from None
    except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
        raise AmbiguousOutcome(f"transport:{type(exc).__name__}") from None
    if status >= 500:
        raise AmbiguousOutcome(f"http_{status}")
    if status == 429:  # whatever the body says: nothing was done, ask again later
        return HttpAnswer(status, {}, retry_after_s(retry_after))
    try:  # strictly: whatever the answer says may be stored (a reason, an order id)
        body = strict_json.loads(content)
    except ValueError:
        raise AmbiguousOutcome(f"unparseable_body_http_{status}") from None
    if not isinstance(body, dict):
        raise AmbiguousOutcome(f"unexpected_body_http_{status}")
    return HttpAnswer(status, body)


RETRY_AFTER_DEFAULT_S = 1.0
RETRY_AFTER_MAX_S = 300.0


def retry_after_s(header: str | None, now: datetime | None = None) -> float:
    """A Retry-After header (seconds or an HTTP date) as seconds, within 0..5 min;
    missing or unreadable: 1 s."""
    if header is None:
        return RETRY_AFTER_DEFAULT_S
    value = header.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return RETRY_AFTER_DEFAULT_S
        if when.tzinfo is None:
            return RETRY_AFTER_DEFAULT_S
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)
