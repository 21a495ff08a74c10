"""Prometheus metrics of the side effects: ledger, provider and cascade-core calls.

Per process, like engine/metrics.py (which says how they are summed).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from engine.metrics import FAST_BUCKETS

PROVIDER_OUTCOMES = Counter(
    "provider_outcomes_total",
    "Provider answers, classified at the edge",
    ["provider", "call", "outcome"],
)
LEDGER_LATENCY = Histogram(
    "ledger_call_seconds", "Ledger call latency", ["operation"], buckets=FAST_BUCKETS
)
LEDGER_ERRORS = Counter("ledger_errors_total", "Ledger calls that failed", ["operation", "kind"])
CORE_NOTIFICATIONS = Counter(
    "core_notifications_total", "Outcome callbacks to cascade-core", ["result"]
)
