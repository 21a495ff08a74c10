"""Client for cascade-core's balance API (freeze, commit, rollback), keyed by task id.

Only a 200 moves a task. A definitive refusal is a typed result; anything we
cannot interpret raises AmbiguousOutcome so the job retries the same call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlencode

from activities import metrics as activity_metrics
from activities.http import OutboundHttp, call
from activities.outcomes import AmbiguousOutcome, HttpAnswer


class FreezeResult(StrEnum):
    """A freeze's definitive answer. All but FROZEN mean nothing is frozen for the
    task; the values are the ledger's error codes, and the task's skip reason."""

    FROZEN = "frozen"
    # Frozen, but not by this call: the ledger held the key already (its answer says
    # `replayed`). After a failover that lost commits, a timeline we no longer
    # remember froze it, and may have sent the order too.
    REPLAYED = "replayed"
    INSUFFICIENT = "insufficient_balance"
    # The hold was rolled back (or voided) before: a task replayed after a lost
    # commit must not take a released hold's old 200 for money frozen.
    RELEASED = "hold_released"


class LedgerRefused(Exception):
    """A definitive 4xx that leaves the hold in a state we did not ask for."""

    def __init__(self, operation: str, status: int, code: str | None) -> None:
        super().__init__(f"ledger refused {operation}: http {status} {code}")
        self.code = code


@dataclass(frozen=True)
class Hold:
    key: str
    provider: str
    currency: str
    amount: str
    # cascade-core's order id: lets reconciliation name the withdrawal behind a hold
    # the service has lost (a failover that lost commits). Not part of the hold's
    # idempotency: a replay without it is the same request.
    order_id: str | None = None


@dataclass(frozen=True)
class LedgerHold:
    """A hold as the ledger lists it, for reconciliation."""

    key: str
    status: str  # frozen, committed, released, or void: a tombstone, nothing ever frozen
    provider: str | None
    currency: str | None
    amount: str | None
    order_id: str | None


@dataclass(frozen=True)
class HoldPage:
    holds: list[LedgerHold]  # in byte order of key
    next: str | None  # the `after` of the next page; None: this was the last


class LedgerClient:
    def __init__(self, client: OutboundHttp, base_url: str, token: str) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def freeze(self, hold: Hold, trace_headers: dict[str, str]) -> FreezeResult:
        body = {"provider": hold.provider, "currency": hold.currency, "amount": hold.amount}
        if hold.order_id is not None:
            body["order_id"] = hold.order_id
        answer = await self._post(f"/v1/holds/{hold.key}/freeze", body, trace_headers)
        if answer.status == 200:
            return (
                FreezeResult.REPLAYED
                if answer.body.get("replayed") is True
                else FreezeResult.FROZEN
            )
        if answer.status == 422 and answer.error_code == "insufficient_balance":
            return FreezeResult.INSUFFICIENT
        if answer.status == 409 and answer.error_code == "hold_released":
            return FreezeResult.RELEASED
        raise LedgerRefused("freeze", answer.status, answer.error_code)

    async def commit(self, key: str, trace_headers: dict[str, str]) -> None:
        answer = await self._post(f"/v1/holds/{key}/commit", {}, trace_headers)
        if answer.status != 200:
            raise LedgerRefused("commit", answer.status, answer.error_code)

    async def rollback(self, key: str, trace_headers: dict[str, str]) -> None:
        """A key with nothing frozen is voided: the ledger keeps a tombstone, so a
        freeze that lands later is refused."""
        answer = await self._post(f"/v1/holds/{key}/rollback", {}, trace_headers)
        if answer.status != 200:
            raise LedgerRefused("rollback", answer.status, answer.error_code)

    async def hold_status(self, key: str, trace_headers: dict[str, str]) -> str | None:
        """`frozen`, `committed`, `released`, `void`, or None: the ledger has no such key."""
        answer = await self._send("get", "GET", f"/v1/holds/{key}", None, trace_headers)
        if answer.status == 404 and answer.error_code == "hold_not_found":
            return None
        if answer.status != 200:
            raise LedgerRefused("get", answer.status, answer.error_code)
        return _hold_status(answer.body)

    async def hold_page(self, after: str | None, limit: int) -> HoldPage:
        """The `limit` holds after key `after` (None: from the first), in byte order of
        key (docs/protocols.md): a caller never holds more than a page of them."""
        query = urlencode({"limit": limit} | ({"after": after} if after is not None else {}))
        answer = await self._send("list", "GET", f"/v1/holds?{query}", None, {})
        if answer.status != 200:
            raise LedgerRefused("list", answer.status, answer.error_code)
        return _hold_page(answer.body)

    async def _post(self, path: str, body: dict[str, str], extra: dict[str, str]) -> HttpAnswer:
        return await self._send(path.rsplit("/", 1)[-1], "POST", path, body, extra)

    async def _send(
        self,
        operation: str,
        method: str,
        path: str,
        body: dict[str, str] | None,
        extra: dict[str, str],
    ) -> HttpAnswer:
        started = time.perf_counter()
        try:
            answer = await call(
                self._client,
                method,
                self._base + path,
                json=body,
                headers={**self._headers, **extra},
            )
        except AmbiguousOutcome:
            activity_metrics.LEDGER_ERRORS.labels(operation, "ambiguous").inc()
            raise
        finally:
            activity_metrics.LEDGER_LATENCY.labels(operation).observe(time.perf_counter() - started)
        if answer.status in (401, 403, 429):
            # Misconfiguration or throttling is not the hold's fate: retry, don't decide.
            activity_metrics.LEDGER_ERRORS.labels(operation, f"http_{answer.status}").inc()
            raise AmbiguousOutcome(f"ledger_http_{answer.status}")
        if answer.status != 200:
            activity_metrics.LEDGER_ERRORS.labels(operation, answer.error_code or "refused").inc()
        return answer


def _hold_status(body: dict[str, object]) -> str:
    """A hold's status; a tombstone (no amount: nothing was ever frozen) is `void`."""
    if body.get("amount") is None:
        return "void"
    status = body.get("status")
    if not isinstance(status, str):
        raise AmbiguousOutcome("ledger_hold_without_status")
    return status


def _hold_page(body: dict[str, object]) -> HoldPage:
    holds, cursor = body.get("holds"), body.get("next")
    if not isinstance(holds, list) or not (cursor is None or isinstance(cursor, str)):
        raise AmbiguousOutcome("ledger_unexpected_page")
    return HoldPage([_listed_hold(h) for h in holds], cursor)


def _listed_hold(hold: object) -> LedgerHold:
    if not isinstance(hold, dict) or not isinstance(hold.get("key"), str) or not hold["key"]:
        raise AmbiguousOutcome("ledger_unexpected_hold")
    fields = [hold.get(name) for name in ("provider", "currency", "amount", "order_id")]
    if not all(value is None or isinstance(value, str) for value in fields):
        raise AmbiguousOutcome("ledger_unexpected_hold")
    provider, currency, amount, order_id = fields
    return LedgerHold(hold["key"], _hold_status(hold), provider, currency, amount, order_id)
