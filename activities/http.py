"""One place that turns an HTTP exchange into an HttpAnswer or an AmbiguousOutcome."""

from __future__ import annotations

from typing import Any

import httpx

from activities import strict_json
from activities.outcomes import AmbiguousOutcome, HttpAnswer


async def call(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> HttpAnswer:
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise AmbiguousOutcome("timeout") from None
    except httpx.TransportError as exc:
        raise AmbiguousOutcome(f"transport:{type(exc).__name__}") from None
    if response.status_code >= 500:
        raise AmbiguousOutcome(f"http_{response.status_code}")
    try:  # strictly: whatever the answer says may be stored (a reason, an order id)
        body = strict_json.loads(response.content)
    except ValueError:
        raise AmbiguousOutcome(f"unparseable_body_http_{response.status_code}") from None
    if not isinstance(body, dict):
        raise AmbiguousOutcome(f"unexpected_body_http_{response.status_code}")
    return HttpAnswer(response.status_code, body)
