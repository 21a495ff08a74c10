"""What the engine promises and expects: its errors, its scheduler, its results."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from engine.journal import Conn
from engine.rows import JsonObject, QueueRow, TaskRow
from workflows.core import Event, Routing


class StaleEvent(Exception):
    """The task moved on since the event was produced; nothing was written."""


class UnknownTask(Exception):
    pass


class QueueFinished(Exception):
    """The queue already reached a final status; nothing was changed."""


class Transient(Exception):
    """The same call may simply be made again (its outcome is unknown, and it is
    idempotent): the job that made it is retried with backoff (engine/retry.py)."""


class Scheduler(Protocol):
    async def defer_activity(
        self,
        conn: Conn,
        task_id: str,
        activity: str,
        token: int,
        rows: tuple[TaskRow, QueueRow] | None = None,
        delay_s: float = 0.0,
    ) -> None: ...

    def token_written(self, task_id: str, token: int | None) -> None: ...

    async def defer_timer(self, conn: Conn, task_id: str, kind: str, due_at: datetime) -> None: ...

    async def defer_notification(self, conn: Conn, queue_id: str, delay_s: float = 0.0) -> None: ...


class Admission(Protocol):
    """The shell's verdicts on a queue's pending tasks (provider health and limits),
    asked only when a routed queue rule is about to start one; the slot of the
    first admitted task is reserved in `conn`'s transaction."""

    async def __call__(self, conn: Conn, queue: QueueRow, pending: list[TaskRow]) -> Routing: ...


class TransitionListener(Protocol):
    """Told of every committed-with-it state change, inside its transaction (the
    shell records provider outcomes and routing metrics here)."""

    async def __call__(
        self,
        conn: Conn,
        queue: QueueRow,
        task: TaskRow,
        event: Event,
        from_status: str,
        to_status: str,
    ) -> None: ...


class FinishListener(Protocol):
    """Told when a queue reaches its final status, inside that transaction (the
    shell counts outcomes here)."""

    async def __call__(self, conn: Conn, queue: QueueRow, status: str) -> None: ...


class OutcomeNotice(Protocol):
    """The shell's word to its caller once a queue is final (cascade-core's callback):
    read in the finishing transaction, sent after it commits (or by a `notify`
    job, retried), then marked sent; `untold` lists final queues never marked."""

    async def read(self, conn: Conn, queue_id: str) -> JsonObject | None: ...

    async def send(self, outcome: JsonObject, headers: dict[str, str]) -> None: ...

    async def mark_sent(self, conn: Conn, queue_id: str) -> None: ...

    async def untold(self, conn: Conn, grace_s: float, limit: int) -> list[str]: ...


@dataclass(frozen=True)
class ShellJob:
    """A job the shell adds to the runtime's (engine/jobs.py): its queue, its body
    (given the runtime and the job's arguments), and how to find the task it is
    about, for log ids and its dead letter."""

    queue: str
    run: Callable[..., Awaitable[object]]  # (runtime, **arguments)
    task_of: Callable[[Conn, JsonObject], Awaitable[str | None]] | None = None
    # Periodic too: deferred at each tick of this cron (one worker runs it), with a
    # `timestamp` argument.
    cron: str | None = None


@dataclass(frozen=True)
class Applied:
    task_id: str
    from_status: str
    to_status: str
    version: int
    changed: bool
    alerts: tuple[str, ...] = ()  # kinds of the alerts the decision raised


@dataclass(frozen=True)
class Origin:
    """Who caused an event, carried into the audit trail and outbox."""

    actor: str = "system"
    trace_id: str | None = None


SYSTEM = Origin()  # the default origin: the service itself
