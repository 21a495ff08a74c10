"""How a failed job is retried: capped exponential backoff, for transient failures only.

Transient means the same call can simply be made again: an ambiguous answer
from a ledger or provider (every call is idempotent by task id), or a database
that went away, deadlocked or failed to serialise for a moment. Anything else
(a definitive refusal, a bug) fails the job at once and becomes a dead letter.
"""

from __future__ import annotations

import math

import procrastinate
import psycopg
from procrastinate.jobs import Job

from engine.contracts import Transient

# psycopg's OperationalError covers a lost connection, a server shutting down or
# starting up, the pool's timeout, deadlocks and serialisation failures. A write
# refused as read-only is a connection that landed on a standby during a failover.
TRANSIENT: tuple[type[BaseException], ...] = (
    Transient,  # e.g. an ambiguous answer from a ledger or provider (activities/outcomes.py)
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
)


class CappedBackoff(procrastinate.BaseRetryStrategy):
    """Waits base, 2·base, 4·base, … seconds, never more than `cap_s`."""

    def __init__(self, max_attempts: int, base_s: float, cap_s: float) -> None:
        self.max_attempts, self.base_s, self.cap_s = max_attempts, base_s, cap_s

    def delay_s(self, attempts: int) -> float:
        return float(min(self.cap_s, self.base_s * 2 ** min(attempts, 32)))

    def get_retry_decision(
        self, *, exception: BaseException, job: Job
    ) -> procrastinate.RetryDecision | None:
        if job.attempts >= self.max_attempts or not isinstance(exception, TRANSIENT):
            return None
        wait_ms = math.ceil(self.delay_s(job.attempts) * 1000)
        return procrastinate.RetryDecision(retry_in={"milliseconds": wait_ms})
