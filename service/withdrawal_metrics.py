"""Prometheus metrics of the withdrawal service: outcomes, webhooks, routing, circuits.

Per process, like engine/metrics.py (which says how they are summed); the gauges
are computed from SQL by the API server only (service/metrics_api.py). The
outcome, cohort and settle-objective series are counted by service/settle_slo.py.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# The rollout gate's policies (order_queues.policy); anything else is "other", so
# that a label's values stay bounded whatever a future policy is called.
POLICIES = ("single_shot", "cascade", "health_cascade", "other")
FINAL_STATUSES = ("COMPLETED", "FAILED", "CANCELLED")
SETTLE_RESULTS = ("on_time", "late", "overdue")  # late and overdue: the objective's bad events
ANSWER_CLASSES = ("2xx", "4xx", "5xx")
# Submission to final: seconds (a decline) to hours (a manual check), around the
# 15-minute webhook SLA and the settle objective's 20 minutes.
SETTLE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 21600, 86400)


def policy_label(policy: object) -> str:
    return str(policy) if policy in POLICIES else "other"


WITHDRAWAL_OUTCOMES = Counter(
    "withdrawal_outcomes_total", "Withdrawals reaching a final status", ["policy", "status"]
)
TIME_TO_FINAL = Histogram(
    "withdrawal_time_to_final_seconds",
    "Submission to final status, per withdrawal",
    ["policy", "status"],
    buckets=SETTLE_BUCKETS,
)
ATTEMPTS = Histogram(
    "withdrawal_attempts",
    "Providers tried (tasks started) per withdrawal, counted when it is final",
    ["policy"],
    buckets=(0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 32),
)
MANUAL_CHECKS_ENTERED = Counter(
    "withdrawal_manual_checks_total",
    "Tasks sent to a person (MANUAL_CHECK), by their withdrawal's policy",
    ["policy"],
)
SETTLE_SLO = Counter(
    "withdrawal_settle_slo_total",
    "Withdrawals counted against the settle objective (final or in manual check within"
    " SETTLE_SLO_S): on_time, late (settled after it), overdue (unsettled past it)",
    ["policy", "result"],
)
WEBHOOK_ANSWERS = Counter(
    "webhook_answers_total",
    "Webhooks that passed verification, by the class of our answer (2xx: stored)",
    ["provider", "code"],
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

# Every series a cohort or objective panel divides by exists from the start, at 0:
# a ratio over a series never yet incremented would show nothing, not 0%.
for _policy in POLICIES:
    MANUAL_CHECKS_ENTERED.labels(_policy)
    for _status in FINAL_STATUSES:
        WITHDRAWAL_OUTCOMES.labels(_policy, _status)
    for _result in SETTLE_RESULTS:
        SETTLE_SLO.labels(_policy, _result)
