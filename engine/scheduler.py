"""Where the engine's next steps go: run here after the commit, or queued as jobs.

An activity or notification asked for inside a transaction scope (every engine
transition opens one) runs in this process once the transaction commits, when
its InlineRunner has room; otherwise, and for every retry or repair, it is a
procrastinate job deferred on the transition's own connection.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import procrastinate
from procrastinate.types import TimeDeltaParams

from engine import commit_hooks, notifications, timers
from engine.inline import InlineRunner, Intent
from engine.journal import Conn

InlineActivity = Callable[[Intent], Awaitable[None]]
InlineNotification = Callable[[dict[str, Any]], Awaitable[None]]


class ProcrastinateScheduler:
    """The engine's Scheduler. Without a runner (tests, tools), everything is a job."""

    def __init__(self, app: procrastinate.App, runner: InlineRunner | None = None) -> None:
        self._app = app
        self.runner = runner
        # Set by the process once its runtime exists (they need each other).
        self.inline_activity: InlineActivity | None = None
        self.inline_notification: InlineNotification | None = None

    async def defer_activity(
        self,
        conn: Conn,
        task_id: str,
        activity: str,
        token: int,
        rows: tuple[dict[str, Any], dict[str, Any]] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """`rows`: the task and queue as the transition leaves them (needed to run it
        here); `delay_s`: a retry's wait, always as a job."""
        intents = self._inline_intents() if rows is not None and not delay_s else None
        if intents is not None and rows is not None:
            intents[task_id] = Intent(task_id, activity, token, *rows)
            return
        task = self._app.tasks["activity"].configure(connection=conn, schedule_in=_after(delay_s))
        await task.defer_async(task_id=task_id, activity=activity, token=token)

    def token_written(self, task_id: str, token: int | None) -> None:
        """The task's token changed later in the same transaction: an activity asked
        for earlier in it is superseded and must not run."""
        notes = commit_hooks.scope_notes()
        intents: dict[str, Intent] = (notes or {}).get("inline", {})
        if task_id in intents and intents[task_id].token != token:
            del intents[task_id]

    async def defer_timer(self, conn: Conn, task_id: str, kind: str, due_at: datetime) -> None:
        await timers.schedule(conn, task_id, kind, due_at)

    async def defer_notification(self, conn: Conn, queue_id: str, delay_s: float = 0.0) -> None:
        notify, runner = self.inline_notification, self.runner
        if notify and runner and runner.has_room() and commit_hooks.scope_notes() is not None:
            row = await notifications.outcome_of(conn, queue_id)
            if row is not None:
                commit_hooks.on_commit(lambda: runner.submit(lambda: notify(row)))
                return
        task = self._app.tasks["notify"].configure(connection=conn, schedule_in=_after(delay_s))
        await task.defer_async(queue_id=queue_id)

    async def defer_timer_job(self, conn: Conn, args: dict[str, Any]) -> None:
        """A due timer whose delivery failed: a job retries it."""
        await self._app.tasks["timer"].configure(connection=conn).defer_async(**args)

    async def defer_webhook(self, conn: Conn, inbox_id: int) -> None:
        await self._app.tasks["webhook"].configure(connection=conn).defer_async(inbox_id=inbox_id)

    def _inline_intents(self) -> dict[str, Intent] | None:
        """This transaction's activities to run here after it commits (None: use jobs)."""
        notes, runner, run = commit_hooks.scope_notes(), self.runner, self.inline_activity
        if notes is None or runner is None or run is None or not runner.has_room():
            return None
        if "inline" not in notes:
            intents: dict[str, Intent] = {}
            notes["inline"] = intents

            def start() -> None:
                for intent in intents.values():
                    runner.submit(lambda intent=intent: run(intent))  # type: ignore[misc]

            commit_hooks.on_commit(start)
        inline: dict[str, Intent] = notes["inline"]
        return inline


def _after(delay_s: float) -> TimeDeltaParams | None:
    return {"seconds": math.ceil(delay_s)} if delay_s > 0 else None
