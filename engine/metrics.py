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

TIMER_LATENESS = Histogram(
    "timer_lateness_seconds", "Timer fired time minus due time", buckets=FAST_BUCKETS
)

ALERTS = Counter(
    "workflow_alerts_total",
    "Attention alerts raised by decisions, by kind",
    ["kind"],
)

SWEEP_ACTIONS = Counter(
    "sweep_actions_total",
    "Live tasks that waited for nothing: lost jobs deferred again, or flagged",
    ["action"],
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

WORKERS_ALIVE = Gauge(
    "workers_alive", "Workers whose heartbeat is younger than WORKER_STALLED_AFTER_S"
)

WORKER_HEARTBEAT_AGE = Gauge(
    "worker_heartbeat_age_seconds", "Age of the freshest worker heartbeat (-1: no worker yet)"
)
