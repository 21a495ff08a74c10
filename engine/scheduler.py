"""Where the engine's next steps go: run here after the commit, or queued as jobs.

An activity or notification asked for inside a transaction scope (every engine
transition opens one) runs in this process once the transaction commits, when
its InlineRunner has room; otherwise, and for every retry or repair, it is a
procrastinate job deferred on the transition's own connection.

The path, end to end: `Engine` asks `defer_activity`; the intent goes into this
transaction's `StepsAfterCommit` (commit_hooks keeps it for exactly one
transaction, and forgets what a rolled-back savepoint added); once the
transaction commits, each intent still current is submitted to the runner,
which calls `AfterCommitSteps.run_step` (the Runtime's `run_inline`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import procrastinate
from procrastinate.types import TimeDeltaParams

from engine import commit_hooks, timers
from engine.contracts import OutcomeNotice
from engine.inline import InlineRunner, Intent
from engine.journal import Conn
from engine.rows import JsonObject, QueueRow, TaskRow


@dataclass(frozen=True)
class AfterCommitSteps:
    """What runs here after a commit: the runner, and what it runs."""

    runner: InlineRunner | None
    run_step: Callable[[Intent], Awaitable[None]]
    tell: Callable[[str, JsonObject], Awaitable[None]]  # a queue's final outcome

    def room(self) -> InlineRunner | None:
        """The runner, if it may take another step now."""
        runner = self.runner
        return runner if runner is not None and runner.has_room() else None


@dataclass
class StepsAfterCommit:
    """One transaction's activities to run here once it commits, by task: a later
    transition of the same task in the same transaction supersedes its intent."""

    intents: dict[str, Intent] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Intent]:
        return dict(self.intents)

    def restore(self, snapshot: dict[str, Intent]) -> None:
        self.intents.clear()  # in place: the commit hook holds this very object
        self.intents.update(snapshot)


class ProcrastinateScheduler:
    """The engine's Scheduler. Without `steps` (tests, tools), everything is a job."""

    def __init__(
        self,
        app: procrastinate.App,
        steps: AfterCommitSteps | None = None,
        notice: OutcomeNotice | None = None,
    ) -> None:
        self._app = app
        self.steps = steps
        self._notice = notice

    @property
    def runner(self) -> InlineRunner | None:
        return self.steps.runner if self.steps is not None else None

    async def defer_activity(
        self,
        conn: Conn,
        task_id: str,
        activity: str,
        token: int,
        rows: tuple[TaskRow, QueueRow] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """`rows`: the task and queue as the transition leaves them (needed to run it
        here); `delay_s`: a retry's wait, always as a job."""
        pending = self._after_commit() if rows is not None and not delay_s else None
        if pending is not None and rows is not None:
            pending.intents[task_id] = Intent(task_id, activity, token, *rows)
            return
        task = self._app.tasks["activity"].configure(connection=conn, schedule_in=_after(delay_s))
        await task.defer_async(task_id=task_id, activity=activity, token=token)

    def token_written(self, task_id: str, token: int | None) -> None:
        """The task's token changed later in the same transaction: an activity asked
        for earlier in it is superseded and must not run."""
        pending = commit_hooks.scoped(StepsAfterCommit)
        if pending is not None:
            intent = pending.intents.get(task_id)
            if intent is not None and intent.token != token:
                del pending.intents[task_id]

    async def defer_timer(self, conn: Conn, task_id: str, kind: str, due_at: datetime) -> None:
        await timers.schedule(conn, task_id, kind, due_at)

    async def defer_notification(self, conn: Conn, queue_id: str, delay_s: float = 0.0) -> None:
        """Tell the queue's final outcome: here after the commit when there is room
        (read now, as it will commit), else (and for a retry) as a job."""
        steps, notice = self.steps, self._notice
        if notice is None:
            return
        runner = steps.room() if steps is not None and not delay_s else None
        if steps is not None and runner is not None and commit_hooks.in_scope():
            outcome = await notice.read(conn, queue_id)
            if outcome is not None:
                tell = steps.tell
                commit_hooks.on_commit(lambda: runner.submit(lambda: tell(queue_id, outcome)))
                return
        task = self._app.tasks["notify"].configure(connection=conn, schedule_in=_after(delay_s))
        await task.defer_async(queue_id=queue_id)

    async def defer_timer_job(self, conn: Conn, args: JsonObject) -> None:
        """A due timer whose delivery failed: a job retries it."""
        await self._app.tasks["timer"].configure(connection=conn).defer_async(**args)

    async def defer_job(self, conn: Conn, name: str, **args: Any) -> None:
        """One of the shell's own jobs (engine/jobs.py, ShellJob), in this transaction."""
        await self._app.tasks[name].configure(connection=conn).defer_async(**args)

    def _after_commit(self) -> StepsAfterCommit | None:
        """This transaction's activities to run here after it commits (None: use jobs)."""
        steps = self.steps
        runner = steps.room() if steps is not None else None
        if steps is None or runner is None or not commit_hooks.in_scope():
            return None
        pending = commit_hooks.scoped(StepsAfterCommit)
        if pending is None:
            pending = commit_hooks.keep(StepsAfterCommit())
            run_step = steps.run_step

            def start() -> None:
                for intent in pending.intents.values():
                    runner.submit(lambda intent=intent: run_step(intent))  # type: ignore[misc]

            commit_hooks.on_commit(start)
        return pending


def _after(delay_s: float) -> TimeDeltaParams | None:
    return {"seconds": math.ceil(delay_s)} if delay_s > 0 else None
