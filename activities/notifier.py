"""Tells cascade-core each withdrawal's final outcome (an HTTP callback).

Idempotent: the withdrawal id is the Idempotency-Key, so a retried or replayed
callback is recorded once by cascade-core. A 2xx is delivered; 5xx, timeouts
and 429 are ambiguous and retried by the job; any other 4xx is final (the job
dead-letters, visible to ops). Counted in core_notifications_total by result.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict, cast

from activities import metrics as activity_metrics
from activities.http import OutboundHttp, call
from activities.outcomes import AmbiguousOutcome
from engine.rows import JsonObject
from workflows.money import format_minor


class NotificationRefused(Exception):
    """cascade-core refused the callback for good (a 4xx other than 429)."""


class OutcomeRow(TypedDict):
    """What service/notifications.py reads of a final withdrawal."""

    withdrawal_id: str
    order_id: str
    merchant_id: str
    status: str
    amount_minor: int
    currency: str
    finished_at: datetime | None
    provider: str | None
    provider_ref: str | None


def outcome_body(row: OutcomeRow) -> JsonObject:
    currency = str(row["currency"]).strip()
    finished = row["finished_at"]
    return {
        "withdrawal_id": row["withdrawal_id"],
        "order_id": row["order_id"],
        "merchant_id": row["merchant_id"],
        "status": row["status"],
        "amount": format_minor(int(row["amount_minor"]), currency),
        "currency": currency,
        "provider": row["provider"],
        "provider_reference": row["provider_ref"],
        "finished_at": finished.isoformat() if finished else None,
    }


class CoreNotifier:
    def __init__(self, client: OutboundHttp, url: str, token: str) -> None:
        self._client = client
        self._url = url.rstrip("/") + "/v1/withdrawal-outcomes"
        self._headers = {"Authorization": f"Bearer {token}"}

    async def notify(self, row: JsonObject, headers: dict[str, str]) -> None:
        """`row`: the outcome as read (the JSON edge of the engine's OutcomeNotice)."""
        outcome = outcome_body(cast(OutcomeRow, row))
        key = {"Idempotency-Key": outcome["withdrawal_id"]}
        try:
            answer = await call(
                self._client,
                "POST",
                self._url,
                json=outcome,
                headers={**self._headers, **headers, **key},
            )
        except AmbiguousOutcome:
            activity_metrics.CORE_NOTIFICATIONS.labels("retry").inc()
            raise
        if 200 <= answer.status < 300:
            activity_metrics.CORE_NOTIFICATIONS.labels("delivered").inc()
            return
        if answer.status == 429:
            activity_metrics.CORE_NOTIFICATIONS.labels("retry").inc()
            raise AmbiguousOutcome("core_http_429")
        activity_metrics.CORE_NOTIFICATIONS.labels("refused").inc()
        raise NotificationRefused(f"cascade-core answered {answer.status} {answer.error_code}")
