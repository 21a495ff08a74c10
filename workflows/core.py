"""Vocabulary shared by every workflow definition: commands, errors, the protocol.

A definition is pure. `decide(state, event, now)` returns the next state and a
list of commands; the engine (the imperative shell) carries the commands out in
the same database transaction that stores the new state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class IllegalTransition(Exception):
    """The event does not apply to the state. Nothing was changed."""

    def __init__(self, status: str, event: str) -> None:
        super().__init__(f"event {event!r} is not allowed in state {status}")
        self.status = status
        self.event = event


@dataclass(frozen=True)
class Event:
    """Base of all events. `name` is what the audit trail records."""

    @property
    def name(self) -> str:
        return _snake(type(self).__name__)


@dataclass(frozen=True)
class RunActivity:
    """Run a side effect (ledger or provider call) in a job after commit."""

    activity: str


@dataclass(frozen=True)
class StartTimer:
    """Deliver a `TimerFired(kind, due_at)` event at `due_at`, durably."""

    kind: str
    due_at: datetime


@dataclass(frozen=True)
class FollowUp:
    """Apply another event to the same task in the same transaction."""

    event: Event


@dataclass(frozen=True)
class Alert:
    """Publish an attention event (e.g. a provider contradicting a final state)."""

    kind: str
    detail: str


@dataclass(frozen=True)
class Reconsider:
    """Run the queue rule again after this transition, although the task's status
    did not change (a task waiting for its provider's turn came due)."""


Command = RunActivity | StartTimer | FollowUp | Alert | Reconsider


@dataclass(frozen=True)
class TaskView:
    """What the queue rule needs to know about one task."""

    task_id: str
    position: int
    status: str
    # Version 3 of the withdrawal (workflows/withdrawal_timelines.py): an unstarted
    # task waiting for the ledger's word before it ends, and one a lost timeline
    # started, which must run before anything else.
    settling: bool = False
    resumed: bool = False
    # Version 4 (workflows/withdrawal_deferral.py): passed over for an unhealthy
    # provider, to be tried after every healthier one.
    passed_over: bool = False


@dataclass(frozen=True)
class Hold:
    """Keep this pending task waiting until `until` (a durable timer), then decide again."""

    task_id: str
    until: datetime
    reason: str


@dataclass(frozen=True)
class QueueDecision:
    """New queue status (None: unchanged), tasks to start and tasks to stop; with
    routing, tasks to skip (why) and a task to hold."""

    status: str | None
    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    skip: tuple[tuple[str, str], ...] = ()
    hold: Hold | None = None


@dataclass(frozen=True)
class Admit:
    """The task may start now (`probe`: as one of a recovering provider's probes)."""

    probe: bool = False


@dataclass(frozen=True)
class Unhealthy:
    """Its provider's circuit is open; it may be tried again from `probe_at`.
    `forced`: a person forced it open, and no routing rule overrides a person."""

    probe_at: datetime
    forced: bool = False


@dataclass(frozen=True)
class Limited:
    """Its provider is at a limit (`reason`) until `until`."""

    until: datetime
    reason: str


Verdict = Admit | Unhealthy | Limited


@dataclass(frozen=True)
class Routing:
    """What the shell knows about the pending tasks' providers, for the queue rule:
    a verdict per pending task in position order, up to the first Admit (for which
    the shell has reserved the slot), and how long the queue may wait in all."""

    verdicts: Mapping[str, Verdict]
    now: datetime
    wait_until: datetime


@dataclass(frozen=True)
class Storage:
    """Where a workflow's instances live: the names the definition gives the engine,
    which names no table of its own but its generic ones (outbox, timers, dead
    letters). Each queue row has the engine's columns (id, status, workflow,
    workflow_version, cancel_requested, needs_attention, attention_reason, trace_id,
    traceparent, updated_at, finished_at) and `key`; each task row has id, queue_id,
    position, status, version, activity, activity_token, updated_at and the
    definition's own columns; the audit table has the journal's columns."""

    queues: str
    tasks: str
    audit: str
    key: str  # the caller's key for a queue (an order id): in every event and log line
    subject_prefix: str  # outbox subjects: "<prefix>.task.<status>", "<prefix>.queue.<status>"
    span_columns: tuple[str, ...] = ()  # task columns put on traces (ids, never money)
    # SQL over the task row `t`: tasks the sweep also checks, besides live statuses,
    # and tasks it never does (a person has them).
    swept_also: str = "false"
    swept_never: str = "false"
    # The audit table's partition key: a column the journal fills with the queue's
    # `created_at`, so that a queue's whole history lies in one partition (None: an
    # audit table without it).
    audit_partition_key: str | None = None

    def __post_init__(self) -> None:
        partition_key = (self.audit_partition_key,) if self.audit_partition_key else ()
        names = (self.queues, self.tasks, self.audit, self.key, *self.span_columns, *partition_key)
        if not all(n.isidentifier() for n in names):
            raise ValueError("storage names must be SQL identifiers")

    def names(self) -> dict[str, str]:
        """What engine SQL templates are formatted with."""
        names = {"queues": self.queues, "tasks": self.tasks, "audit": self.audit, "key": self.key}
        return names | {"audit_partition_key": self.audit_partition_key or ""}


class WorkflowDefinition(Protocol):
    """What the engine needs from a workflow; nothing else is assumed."""

    name: str
    storage: Storage
    version: int  # a withdrawal is driven by the version it started on (registry.py)
    terminal_statuses: frozenset[str]
    live_statuses: frozenset[str]  # a task waits for an activity, a timer or a person
    routed: bool  # the queue rule takes Routing (provider health and limits)

    def decide(self, state: Any, event: Event, now: datetime) -> tuple[Any, list[Command]]: ...

    def load(self, row: Mapping[str, Any], context: Any) -> Any: ...

    def dump(self, state: Any) -> dict[str, Any]: ...

    def status_of(self, state: Any) -> str: ...

    def queue_decide(
        self,
        queue_status: str,
        cancel_requested: bool,
        tasks: Sequence[TaskView],
        routing: Routing | None = None,
    ) -> QueueDecision: ...

    def start_event(self) -> Event: ...

    def stop_event(self) -> Event: ...

    def cancel_event(self, actor: str, reason: str) -> Event: ...

    def timer_event(self, kind: str, due_at: datetime) -> Event: ...

    def skip_event(self, reason: str) -> Event: ...

    def hold_event(self, until: datetime, reason: str) -> Event: ...

    def task_view(self, row: Mapping[str, Any]) -> TaskView:
        """What the queue rule sees of a task row."""
        ...

    def try_order(self, tasks: Sequence[TaskView]) -> list[str]:
        """The pending tasks' ids in the order the queue rule would try them; the
        shell gives its verdicts in this order (it reserves a slot for the first
        task it admits, which must be the one the rule starts)."""
        ...


def sql_literals(values: Iterable[str]) -> str:
    """`'A', 'B'`, sorted: a set of statuses written into a query as literals (not a
    parameter), so that the planner can match a partial index's predicate."""
    assert all(v.isidentifier() for v in values)
    return ", ".join(f"'{v}'" for v in sorted(values))


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
