"""Prometheus metrics of the withdrawal service: outcomes, webhooks, routing, circuits.

Per process, like engine/metrics.py (which says how they are summed); the gauges
are computed from SQL by the API server only (service/metrics_api.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from engine import commit_hooks
from engine.journal import Conn
from engine.rows import QueueRow

WITHDRAWAL_OUTCOMES = Counter(
    "withdrawal_outcomes_total", "Withdrawals reaching a final status", ["status"]
)
WEBHOOK_VERIFICATIONS = Counter(
    "webhook_verifications_total",
    "Provider webhooks by verification result",
    ["provider", "result"],
)
WEBHOOK_OUTCOMES = Counter(
    "webhook_outcomes_total",
    "Stored webhooks by what applying them did (applied, wrong_provider, ...)",
    ["provider", "outcome"],
)
ROUTING_SKIPS = Counter(
    "routing_skips_total", "Tasks routing passed over (no freeze, no call)", ["provider", "reason"]
)
ROUTING_HOLDS = Counter(
    "routing_holds_total", "Times a task was held for its provider", ["provider", "reason"]
)
ROUTING_WAIT = Counter(
    "routing_wait_seconds_total",
    "Time tasks were held for their provider (limits, probes), as planned at each hold",
    ["provider", "reason"],
)
THROTTLED_WAIT = Counter(
    "provider_throttled_wait_seconds_total",
    "Time create calls waited out a provider's 429 Retry-After",
    ["provider"],
)
CIRCUIT_CHANGES = Counter(
    "provider_circuit_changes_total", "Provider circuits moved", ["provider", "to_state"]
)
WITHDRAWALS = Gauge(
    "withdrawals", "Withdrawals by status, from SQL (the API's view of every process)", ["status"]
)
MANUAL_CHECKS = Gauge("manual_check_queue", "Tasks awaiting a manual check")
PROVIDER_CIRCUIT = Gauge(
    "provider_circuit_state",
    "Each provider's circuit as routing sees it: 0 closed, 1 half-open, 2 open",
    ["provider"],
)


async def count_outcome(conn: Conn, queue: QueueRow, status: str) -> None:
    """The engine's FinishListener: a withdrawal's final status counts once it commits."""
    commit_hooks.on_commit(lambda: WITHDRAWAL_OUTCOMES.labels(status).inc())
