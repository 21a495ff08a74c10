"""The pieces of one transition the engine writes: its SQL, its token, its record.

engine/engine.py carries a decision out; this module holds what it writes with:
the statements (templates named through the definition's Storage), the activity
token rule, the state UPDATE built per set of columns, and the hooks the shell
lends the engine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from engine import commit_hooks, metrics
from engine.contracts import Admission, Applied, FinishListener, TransitionListener
from engine.rows import TaskRow
from workflows.core import Command, RunActivity


def _no_context(_row: TaskRow) -> None:
    return None


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class EngineHooks:
    """What the shell lends the engine: each optional, each called in the transition's
    transaction."""

    context_for: Callable[[TaskRow], Any] = _no_context  # -> decide()'s context (timing)
    clock: Callable[[], datetime] = _now
    admission: Admission | None = None  # None: routed definitions start the first, as v1
    listener: TransitionListener | None = None  # every committed state change
    on_finish: FinishListener | None = None  # a queue's final status


LOCK = """
SELECT to_jsonb(q) AS queue_row, t.*
FROM {queues} q JOIN {tasks} t ON t.queue_id = q.id
WHERE t.id = %s
FOR UPDATE OF q, t
"""
TASK_FOR_UPDATE = "SELECT * FROM {tasks} WHERE id = %s FOR UPDATE"
QUEUE = "SELECT * FROM {queues} WHERE id = %s"
QUEUE_FOR_UPDATE = "SELECT * FROM {queues} WHERE id = %s FOR UPDATE"
CANCEL_REQUESTED = "UPDATE {queues} SET cancel_requested = true, updated_at = now() WHERE id = %s"
OPEN_TASKS = (
    "SELECT id FROM {tasks} WHERE queue_id = %s AND status::text <> ALL(%s)"
    " ORDER BY position FOR UPDATE"
)
SET_TOKEN = "UPDATE {tasks} SET activity_token = %s, activity = %s WHERE id = %s"  # noqa: S105


@functools.cache
def update_query(tasks: str, columns: tuple[str, ...]) -> str:
    """The state UPDATE for these columns (the definition's own names), built once."""
    assert all(c.isidentifier() for c in (tasks, *columns))
    assignments = ", ".join(f'"{c}" = %({c})s' for c in columns)
    return (
        f"UPDATE {tasks} SET {assignments}, version = version + 1, updated_at = now()"  # noqa: S608 - identifiers checked above
        " WHERE id = %(id)s AND version = %(version)s RETURNING version"
    )


def next_token(
    row: TaskRow, commands: list[Command], consumed: bool, *, changed: bool
) -> tuple[int | None, str | None]:
    """The token names the one activity whose result the task now awaits: a new
    activity's (the version the task is written at), none once its result is
    applied, else unchanged (a cancel request or a pending status does not
    supersede it)."""
    issued = next((c.activity for c in commands if isinstance(c, RunActivity)), None)
    if issued is not None:
        return (row["version"] + 1 if changed else row["version"]), issued
    if consumed:
        return None, None
    return row["activity_token"], row["activity"]


def observe_transition(from_status: str, to_status: str, since: datetime, now: datetime) -> None:
    seconds = max((now - since).total_seconds(), 0.0)

    def observe() -> None:
        metrics.TRANSITIONS.labels(from_status, to_status).inc()
        metrics.TASK_TIME_IN_STATE.labels(from_status).observe(seconds)

    commit_hooks.on_commit(observe)


@dataclass
class Transition:
    """One task's move, as it is written: what the commands and the result see."""

    row: TaskRow
    from_status: str
    to_status: str
    changed: bool = False
    values: dict[str, object] = field(default_factory=dict)  # columns written
    version: int = -1

    def __post_init__(self) -> None:
        self.version = self.row["version"]

    @property
    def task_id(self) -> str:
        return str(self.row["id"])

    def task_row(self) -> TaskRow:
        """The task row as this transition leaves it."""
        return cast(TaskRow, {**self.row, **self.values, "version": self.version})

    def applied(self, alerts: tuple[str, ...]) -> Applied:
        return Applied(
            self.task_id, self.from_status, self.to_status, self.version, self.changed, alerts
        )


@dataclass(frozen=True)
class Result:
    token: int
    strict: bool
