"""The contract between the engine and a workflow's side effects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engine.rows import QueueRow, TaskRow
from workflows.core import Event


@dataclass(frozen=True)
class ActivityContext:
    """What an activity sees: the task and queue rows as of the job's version."""

    task: TaskRow
    queue: QueueRow
    headers: dict[str, str]  # propagated on outgoing calls (trace context)


ActivityFn = Callable[[ActivityContext], Awaitable[Event]]


@dataclass(frozen=True)
class Activity:
    run: ActivityFn
    # A guarded result is dropped when the task moved on meanwhile (it was an
    # attempt). An unguarded one is a fact (the ledger moved money) and is
    # always applied; decide() checks it fits.
    guarded: bool = True
