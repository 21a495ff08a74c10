"""What the engine promises and expects: its errors, its scheduler, its results."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from engine.journal import Conn
from workflows.core import Event, Routing


class StaleEvent(Exception):
    """The task moved on since the event was produced; nothing was written."""


class UnknownTask(Exception):
    pass


class QueueFinished(Exception):
    """The queue already reached a final status; nothing was changed."""


class Scheduler(Protocol):
    async def defer_activity(
        self,
        conn: Conn,
        task_id: str,
        activity: str,
        token: int,
        rows: tuple[dict[str, Any], dict[str, Any]] | None = None,
        delay_s: float = 0.0,
    ) -> None: ...

    def token_written(self, task_id: str, token: int | None) -> None: ...

    async def defer_timer(self, conn: Conn, task_id: str, kind: str, due_at: datetime) -> None: ...

    async def defer_notification(self, conn: Conn, queue_id: str, delay_s: float = 0.0) -> None: ...


class Admission(Protocol):
    """The shell's verdicts on a queue's pending tasks (provider health and limits),
    asked only when a routed queue rule is about to start one; the slot of the
    first admitted task is reserved in `conn`'s transaction."""

    async def __call__(
        self, conn: Conn, queue: dict[str, Any], pending: list[dict[str, Any]]
    ) -> Routing: ...


class TransitionListener(Protocol):
    """Told of every committed-with-it state change, inside its transaction (the
    shell records provider outcomes and routing metrics here)."""

    async def __call__(
        self,
        conn: Conn,
        queue: dict[str, Any],
        task: dict[str, Any],
        event: Event,
        from_status: str,
        to_status: str,
    ) -> None: ...


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
