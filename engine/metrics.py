"""Prometheus metrics.

Counters and histograms are per process: every API and worker process serves
its own `/metrics` (workers on `WORKER_METRICS_PORT` + their index), and
Prometheus sums across instances, which stays correct with N workers on N
hosts. State that lives in the database (DLQ size, outbox lag, tasks per state)
is computed from SQL by the API server only, so it is never counted N times.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Observations made inside a transaction count once it commits: wrap them in
# commit_hooks.on_commit (one name for the commit scope: commit_hooks).

TIME_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600)
FAST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

TASK_TIME_IN_STATE = Histogram(
    "task_time_in_state_seconds",
    "Time a task spent in a state before leaving it",
    ["state"],
    buckets=TIME_BUCKETS,
)
TRANSITIONS = Counter(
    "task_transitions_total", "Task state transitions", ["from_state", "to_state"]
)
WITHDRAWAL_OUTCOMES = Counter(
    "withdrawal_outcomes_total", "Withdrawals reaching a final status", ["status"]
)
PROVIDER_OUTCOMES = Counter(
    "provider_outcomes_total",
    "Provider answers, classified at the edge",
    ["provider", "call", "outcome"],
)
WEBHOOK_VERIFICATIONS = Counter(
    "webhook_verifications_total",
    "Provider webhooks by verification result",
    ["provider", "result"],
)
TIMER_LATENESS = Histogram(
    "timer_lateness_seconds", "Timer fired time minus due time", buckets=FAST_BUCKETS
)
LEDGER_LATENCY = Histogram(
    "ledger_call_seconds", "Ledger call latency", ["operation"], buckets=FAST_BUCKETS
)
LEDGER_ERRORS = Counter("ledger_errors_total", "Ledger calls that failed", ["operation", "kind"])
CORE_NOTIFICATIONS = Counter(
    "core_notifications_total", "Outcome callbacks to cascade-core", ["result"]
)
ALERTS = Counter(
    "workflow_alerts_total",
    "Attention alerts raised by decisions (provider_conflict, wrong_provider, ...)",
    ["kind"],
)
WEBHOOK_OUTCOMES = Counter(
    "webhook_outcomes_total",
    "Stored webhooks by what applying them did (applied, wrong_provider, ...)",
    ["provider", "outcome"],
)
SWEEP_ACTIONS = Counter(
    "sweep_actions_total",
    "Live tasks that waited for nothing: lost jobs deferred again, or flagged",
    ["action"],
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
OUTBOX_PUBLISHED = Counter("outbox_published_total", "Outbox events published to JetStream")
OUTBOX_DUPLICATES = Counter(
    "outbox_duplicates_total",
    "Events JetStream acknowledged as duplicates (a relay's own replay of a row)",
)

# Database-derived, refreshed by the API server at scrape time.
DLQ_SIZE = Gauge("dlq_size", "Dead letters not yet replayed")
OUTBOX_LAG = Gauge("outbox_lag_seconds", "Age of the oldest unpublished outbox event")
OUTBOX_BACKLOG = Gauge("outbox_unpublished", "Outbox events not yet published")
TASKS_IN_STATE = Gauge("tasks_in_state", "Tasks currently in each state", ["state"])
MANUAL_CHECKS = Gauge("manual_check_queue", "Tasks awaiting a manual check")
WITHDRAWALS = Gauge(
    "withdrawals", "Withdrawals by status, from SQL (the API's view of every process)", ["status"]
)
WORKERS_ALIVE = Gauge(
    "workers_alive", "Workers whose heartbeat is younger than WORKER_STALLED_AFTER_S"
)
WORKER_HEARTBEAT_AGE = Gauge(
    "worker_heartbeat_age_seconds", "Age of the freshest worker heartbeat (-1: no worker yet)"
)
PROVIDER_CIRCUIT = Gauge(
    "provider_circuit_state",
    "Each provider's circuit as routing sees it: 0 closed, 1 half-open, 2 open",
    ["provider"],
)
