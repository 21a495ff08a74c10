"""The withdrawal workflow as the engine sees it: decide, persistence mapping, queue rule.

Queue rule: any task SUCCEEDED completes the queue and stops the PENDING rest.
While a task is live nothing else starts (the database enforces one live task
per queue). Otherwise the next PENDING task starts, unless cancellation was
requested; with nothing left, the queue is FAILED (or CANCELLED).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from workflows import withdrawal
from workflows import withdrawal_deferral as deferral
from workflows import withdrawal_timelines as timelines
from workflows.core import Command, Event, QueueDecision, Routing, Storage, TaskView
from workflows.routing import route
from workflows.withdrawal import Transitions
from workflows.withdrawal_events import (
    LIVE,
    TERMINAL,
    Cancel,
    Defer,
    Funds,
    QueueStatus,
    Skip,
    Start,
    Stop,
    TaskState,
    TaskStatus,
    Timer,
    TimerFired,
    Timing,
    Wait,
)
from workflows.withdrawal_routing import V1_TRANSITIONS, V2_TRANSITIONS

# Where withdrawals live (schema.sql). The sweep also checks an unstarted task that
# asks the ledger before it ends (version 3), and leaves a manual check to its person.
STORAGE = Storage(
    queues="order_queues",
    tasks="order_tasks",
    audit="order_task_events",
    key="order_id",
    subject_prefix="order",
    span_columns=("provider",),
    swept_also="(t.status = 'PENDING' AND t.target IS NOT NULL)",
    swept_never="(t.status = 'MANUAL_CHECK' AND t.target IS NULL)",
    audit_partition_key="queue_created_at",  # by month of submission (migration 0015)
)

# `timing` comes from configuration and `provider` is fixed at submission: neither
# is state that a transition writes.
PERSISTED = tuple(f.name for f in fields(TaskState) if f.name not in {"timing", "provider"})


def queue_decide(
    queue_status: str,
    cancel_requested: bool,
    tasks: Sequence[TaskView],
    routing: Routing | None = None,
) -> QueueDecision:
    if queue_status != QueueStatus.ACTIVE:
        return QueueDecision(None)
    pending = sorted((t for t in tasks if t.status == TaskStatus.PENDING), key=lambda t: t.position)
    stop_pending = tuple(t.task_id for t in pending)
    if any(t.status == TaskStatus.SUCCEEDED for t in tasks):
        return QueueDecision(QueueStatus.COMPLETED, stop=stop_pending)
    if any(t.status not in TERMINAL and t.status != TaskStatus.PENDING for t in tasks):
        return QueueDecision(None)
    if cancel_requested:
        return QueueDecision(QueueStatus.CANCELLED, stop=stop_pending)
    if pending and routing is not None:
        return route(pending, routing, QueueStatus.FAILED)
    if pending:
        return QueueDecision(None, start=(pending[0].task_id,))
    return QueueDecision(QueueStatus.FAILED)


class WithdrawalDefinition:
    """One version of the machine: a transition table, and whether the queue rule
    routes by provider health and limits (registry.py says which versions are live)."""

    name = "withdrawal"
    storage = STORAGE
    terminal_statuses: frozenset[str] = frozenset(TERMINAL)
    live_statuses: frozenset[str] = frozenset(LIVE)

    def __init__(
        self,
        version: int = 1,
        transitions: Transitions = V1_TRANSITIONS,
        *,
        routed: bool = False,
        asks_the_ledger: bool = False,
        defers: bool = False,
    ) -> None:
        """`asks_the_ledger`: version 3's queue rule (workflows/withdrawal_timelines.py);
        `defers`: version 4's, which defers an unhealthy provider instead of skipping
        it (workflows/withdrawal_deferral.py)."""
        self.version = version
        self.transitions = transitions
        self.routed = routed
        self.asks_the_ledger = asks_the_ledger
        self.defers = defers

    def decide(
        self, state: TaskState, event: Event, now: datetime
    ) -> tuple[TaskState, list[Command]]:
        return withdrawal.decide(state, event, now, self.transitions)

    @staticmethod
    def load(row: Mapping[str, Any], context: Timing) -> TaskState:
        values = {name: row[name] for name in PERSISTED}
        values["status"] = TaskStatus(values["status"])
        values["funds"] = Funds(values["funds"])
        if values["target"] is not None:
            values["target"] = TaskStatus(values["target"])
        return TaskState(**values, timing=context, provider=row.get("provider"))

    @staticmethod
    def dump(state: TaskState) -> dict[str, Any]:
        values = {name: getattr(state, name) for name in PERSISTED}
        return {k: (str(v) if isinstance(v, TaskStatus | Funds) else v) for k, v in values.items()}

    @staticmethod
    def status_of(state: TaskState) -> str:
        return str(state.status)

    def queue_decide(
        self,
        queue_status: str,
        cancel_requested: bool,
        tasks: Sequence[TaskView],
        routing: Routing | None = None,
    ) -> QueueDecision:
        if self.defers:
            return deferral.queue_decide(queue_status, cancel_requested, tasks, routing)
        plain = queue_decide(
            queue_status, cancel_requested, tasks, routing if self.routed else None
        )
        if self.asks_the_ledger:
            return timelines.queue_decide(plain, queue_status, tasks)
        return plain

    @staticmethod
    def start_event() -> Event:
        return Start()

    @staticmethod
    def stop_event() -> Event:
        return Stop()

    @staticmethod
    def cancel_event(actor: str, reason: str) -> Event:
        return Cancel(actor=actor, reason=reason)

    @staticmethod
    def timer_event(kind: str, due_at: datetime) -> Event:
        return TimerFired(kind=Timer(kind), due_at=due_at)

    @staticmethod
    def skip_event(reason: str) -> Event:
        """Version 4's rule passes a task over as DEFERRED: it is not skipped."""
        return Defer(reason) if reason == deferral.DEFERRED else Skip(reason)

    @staticmethod
    def hold_event(until: datetime, reason: str) -> Event:
        return Wait(until, reason)

    @staticmethod
    def task_view(row: Mapping[str, Any]) -> TaskView:
        unstarted = str(row["status"]) == TaskStatus.PENDING
        return TaskView(
            str(row["id"]),
            row["position"],
            str(row["status"]),
            settling=unstarted and row.get("target") is not None,
            resumed=unstarted and bool(row.get("order_submitted")),
            passed_over=unstarted and row.get("last_reason") == deferral.DEFERRED,
        )

    def try_order(self, tasks: Sequence[TaskView]) -> list[str]:
        if self.defers:
            return [t.task_id for t in deferral.try_order(tasks)]
        pending = (t for t in tasks if t.status == TaskStatus.PENDING)
        return [t.task_id for t in sorted(pending, key=lambda t: t.position)]


WITHDRAWAL = WithdrawalDefinition(1, V1_TRANSITIONS)
# Version 2 routes by provider health and limits and waits out a 429 (issue 12).
WITHDRAWAL_V2 = WithdrawalDefinition(2, V2_TRANSITIONS, routed=True)
# Version 3 asks the ledger before it believes what a lost commit may have taken
# with it (a failover that lost commits; docs/ha.md).
WITHDRAWAL_V3 = WithdrawalDefinition(3, timelines.V3_TRANSITIONS, routed=True, asks_the_ledger=True)
# Version 4 defers a provider skipped for health to the end of the cascade, and tries
# what is left once the wait bound has passed, instead of failing untried (issue 25).
WITHDRAWAL_V4 = WithdrawalDefinition(
    4, deferral.V4_TRANSITIONS, routed=True, asks_the_ledger=True, defers=True
)
