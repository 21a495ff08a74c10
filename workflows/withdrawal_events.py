"""States and events of the withdrawal task machine (values match schema.sql enums)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from workflows.core import Event


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    CREATING = "CREATING"
    EXECUTING = "EXECUTING"
    NEGATIVE_EVAL = "NEGATIVE_EVAL"
    RECHECKING = "RECHECKING"
    MANUAL_CHECK = "MANUAL_CHECK"
    SUCCEEDED = "SUCCEEDED"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.SKIPPED, TaskStatus.FAILED, TaskStatus.CANCELLED}
)
# A task is live from its start to its end: the database allows one per withdrawal
# (index order_tasks_one_live), and each waits for an activity, a timer or a person.
LIVE = frozenset(TaskStatus) - TERMINAL - {TaskStatus.PENDING}
# Live and not with a person: an order may be open at the provider (the concurrency
# limit's count, index order_tasks_in_flight; stuck_tasks()).
AT_PROVIDER = LIVE - {TaskStatus.MANUAL_CHECK}


class QueueStatus(StrEnum):
    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Funds(StrEnum):
    """Where this task's hold stands at the ledger, as far as we have been told."""

    NONE = "NONE"
    FROZEN = "FROZEN"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"


class Timer(StrEnum):
    RECHECK = "recheck_tick"
    WEBHOOK_TIMEOUT = "webhook_timeout"
    STATUS_POLL = "status_tick"
    STATUS_TIMEOUT = "status_timeout"
    ADMISSION = "admission_tick"  # a pending task held for its provider's turn
    CREATE_RETRY = "create_retry"  # a create call the provider throttled (429)


@dataclass(frozen=True)
class Timing:
    """Per-provider durations; every one is configurable (time compression)."""

    recheck_base: timedelta = timedelta(seconds=5)
    recheck_factor: float = 2.0
    recheck_cap: timedelta = timedelta(minutes=5)
    recheck_max_attempts: int = 5
    webhook_sla: timedelta = timedelta(minutes=15)
    poll_interval: timedelta | None = None  # None: no status-polling fallback
    status_timeout: timedelta = timedelta(minutes=30)

    def recheck_delay(self, attempt: int) -> timedelta:
        seconds = self.recheck_base.total_seconds() * self.recheck_factor**attempt
        return min(timedelta(seconds=seconds), self.recheck_cap)


@dataclass(frozen=True)
class TaskState:
    status: TaskStatus
    funds: Funds = Funds.NONE
    target: TaskStatus | None = None  # terminal status we move to once the ledger says 200
    provider_ref: str | None = None
    order_submitted: bool = False  # from here on, an order may exist at the provider
    cancel_requested: bool = False
    sla_expired: bool = False
    recheck_attempts: int = 0
    webhook_deadline: datetime | None = None
    next_check_at: datetime | None = None
    status_deadline: datetime | None = None
    last_reason: str | None = None
    timing: Timing = field(default=Timing(), compare=False)
    # Who the task's order belongs to: only this provider may speak for it. Fixed
    # at submission, so it is loaded with the row but never written back.
    provider: str | None = field(default=None, compare=False)


# Queue-level events -----------------------------------------------------------
@dataclass(frozen=True)
class Start(Event):
    pass


@dataclass(frozen=True)
class Stop(Event):
    """Another task of the queue succeeded (or the queue ended): never start."""


@dataclass(frozen=True)
class Cancel(Event):
    actor: str
    reason: str


@dataclass(frozen=True)
class Skip(Event):
    """Routing passes this task over (its provider's circuit is open): no freeze, no call."""

    reason: str


@dataclass(frozen=True)
class Defer(Event):
    """Routing passes this task over for now (version 4): once the ledger says no
    timeline started it, it stays PENDING and is tried after every healthier
    provider (workflows/withdrawal_deferral.py)."""

    reason: str


@dataclass(frozen=True)
class Wait(Event):
    """Routing holds this task until its provider's limit (or a probe) allows it."""

    until: datetime
    reason: str


# Ledger results ----------------------------------------------------------------
@dataclass(frozen=True)
class FundsFrozen(Event):
    """`replayed`: the ledger already held this key frozen (or committed) before this
    call: a timeline the database lost (a failover) froze it, and may have sent the
    order too (version 3 reads it so; workflows/withdrawal_timelines.py)."""

    replayed: bool = False


@dataclass(frozen=True)
class FundsInsufficient(Event):
    """The freeze froze nothing: too little balance, or (`hold_released`) the hold
    was released before, as when a task is replayed after a lost commit."""

    reason: str = "insufficient_balance"


HOLD_RELEASED = "hold_released"  # FundsInsufficient's reason when the ledger had released it


@dataclass(frozen=True)
class KeyVoided(Event):
    """An unstarted task's key is void at the ledger: nothing is frozen under it, and
    now nothing can be (a tombstone, or a hold released before)."""


@dataclass(frozen=True)
class HoldFound(Event):
    """The ledger holds money (`status`: frozen or committed) under an unstarted task's
    key: a timeline the database lost started it. It must run to its own end."""

    status: str


@dataclass(frozen=True)
class NoHold(Event):
    """The ledger holds no money under an unstarted task's key: no timeline started
    it, so the queue may pass it over (version 4); the key stays usable."""


@dataclass(frozen=True)
class FundsCommitted(Event):
    pass


@dataclass(frozen=True)
class FundsReleased(Event):
    pass


@dataclass(frozen=True)
class NothingToRelease(Event):
    pass


# Provider results and observations ----------------------------------------------
# `speaker` on an observation is the provider it came from (the webhook's verified
# signer, or the adapter that answered a status call); None for our own inferences.
# `solicited` marks the answer to our own status call, as opposed to a webhook.
@dataclass(frozen=True)
class OrderSubmitting(Event):
    """Recorded just before the create call leaves, so cancel knows it may exist."""


@dataclass(frozen=True)
class OrderAccepted(Event):
    provider_ref: str
    paid: bool = False


@dataclass(frozen=True)
class OrderDeclined(Event):
    reason: str


@dataclass(frozen=True)
class OrderAmbiguous(Event):
    reason: str


@dataclass(frozen=True)
class OrderThrottled(Event):
    """The provider answered 429: no order was made; try again after `retry_after_s`."""

    retry_after_s: float
    reason: str = "throttled"


@dataclass(frozen=True)
class BeginRecheck(Event):
    pass


@dataclass(frozen=True)
class ProviderSucceeded(Event):
    provider_ref: str | None = None
    speaker: str | None = None
    solicited: bool = False


@dataclass(frozen=True)
class ProviderFailed(Event):
    reason: str = "provider_failed"
    provider_ref: str | None = None
    speaker: str | None = None
    solicited: bool = False


@dataclass(frozen=True)
class ProviderPending(Event):
    provider_ref: str | None = None
    speaker: str | None = None
    solicited: bool = False


@dataclass(frozen=True)
class ProviderNotFound(Event):
    speaker: str | None = None
    solicited: bool = False


@dataclass(frozen=True)
class StatusUnknown(Event):
    reason: str
    speaker: str | None = None
    solicited: bool = False


PROVIDER_OBSERVATIONS = (
    ProviderSucceeded,
    ProviderFailed,
    ProviderPending,
    ProviderNotFound,
    StatusUnknown,
)


@dataclass(frozen=True)
class TimerFired(Event):
    kind: Timer
    due_at: datetime


@dataclass(frozen=True)
class ManualResolved(Event):
    positive: bool
    operator: str
    reason: str
