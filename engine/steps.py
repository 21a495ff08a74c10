"""The bodies of the steps, whoever runs them: right after a commit (engine/inline.py),
a procrastinate job (engine/jobs.py), or the timer pump (engine/timers.py).

`Runtime` is built once per process and owns the object graph of the shell's
side: it builds the scheduler and the engine itself, handing the scheduler its
own methods for the steps run after a commit, so nothing is wired up late.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import procrastinate
import psycopg
from psycopg_pool import AsyncConnectionPool

from engine import logs, metrics, tracing
from engine.activity import Activity, ActivityContext
from engine.contracts import (
    Origin,
    OutcomeNotice,
    Scheduler,
    ShellJob,
    StaleEvent,
    UnknownTask,
)
from engine.engine import Engine, EngineHooks
from engine.inline import InlineRunner, Intent
from engine.journal import Conn
from engine.naming import statement
from engine.rows import JsonObject, QueueRow, TaskRow, as_queue, as_task, column
from engine.scheduler import AfterCommitSteps, ProcrastinateScheduler
from workflows.core import IllegalTransition
from workflows.registry import Definitions

log = logging.getLogger("payment.jobs")  # the name operators already search for


@dataclass(frozen=True)
class RuntimeOptions:
    stalled_after_s: float = 10.0
    sweep_grace_s: float = 60.0  # how long a live task may wait for nothing
    first_retry_s: float = 1.0  # a step that failed in-process is retried as a job after this


class Runtime:
    """Everything a step needs, built once per process. `runner`: run steps here right
    after their commit (None: every step is a job); `notice`: tell each queue's
    final outcome (None: off); `scheduler`: a stand-in (tests), else procrastinate."""

    def __init__(
        self,
        definitions: Definitions,
        pool: AsyncConnectionPool[Conn],
        activities: Mapping[str, Activity],
        *,
        app: procrastinate.App | None = None,
        hooks: EngineHooks | None = None,
        runner: InlineRunner | None = None,
        notice: OutcomeNotice | None = None,
        options: RuntimeOptions = RuntimeOptions(),
        periodic_checks: Callable[[Conn], Awaitable[object]] | None = None,
        shell_jobs: Mapping[str, ShellJob] | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.pool, self.activities, self.notice, self.options = pool, activities, notice, options
        self.periodic_checks = periodic_checks  # the shell's periodic work (the `checks` job)
        self.shell_jobs = shell_jobs or {}  # the shell's own jobs, as build_app was given them
        if scheduler is None:
            assert app is not None, "a runtime without a stand-in scheduler needs the app"
            steps = AfterCommitSteps(runner, self.run_inline, self.notify_inline)
            scheduler = ProcrastinateScheduler(app, steps, notice)
        self.scheduler = scheduler
        self.engine = Engine(definitions, scheduler, hooks or EngineHooks())

    @property
    def jobs(self) -> ProcrastinateScheduler:
        assert isinstance(self.scheduler, ProcrastinateScheduler)
        return self.scheduler

    async def load(self, conn: Conn, task_id: str) -> tuple[TaskRow, QueueRow]:
        cur = await conn.execute(statement(_LOAD, self.engine.storage), (task_id,))
        row = await cur.fetchone()
        if row is None:
            raise UnknownTask(task_id)
        return as_task(row["task"]), as_queue(row["queue"])

    async def run_activity(
        self, task_id: str, name: str, token: int, rows: tuple[TaskRow, QueueRow] | None = None
    ) -> str:
        """Run one activity; returns what happened (for logs and tests). `rows`: the
        task and queue as the transition that asked for it left them (else read here)."""
        async with self.pool.connection() as conn:
            task, queue = rows if rows is not None else await self.load(conn, task_id)
            self._bind_ids(task_id, queue)
            if task["activity_token"] != token:
                return "stale"
            spec = self.activities[name]
            try:
                with tracing.workflow_span(
                    f"step {name}", queue["traceparent"], self._span_attributes(task)
                ):
                    event = await spec.run(ActivityContext(task, queue, trace_headers(queue)))
                    await self.engine.apply(
                        conn, task_id, event, result_of=token, strict=spec.guarded
                    )
            except StaleEvent:
                return "stale"
            except Exception as exc:
                # A failed attempt for a task that moved on meanwhile no longer matters: a
                # guarded result whose call was superseded (a freeze refused because a cancel
                # voided the hold), or a settlement run twice (a stalled job retried while
                # it ran) whose other run applied first and consumed the token.
                moved_on = spec.guarded or isinstance(exc, IllegalTransition)
                if moved_on and (await self.load(conn, task_id))[0]["activity_token"] != token:
                    return "stale"
                raise
            return "applied"

    def _bind_ids(self, task_id: str, queue: QueueRow) -> None:
        key = self.engine.storage.key
        ids = {key: str(column(queue, key))}
        logs.bind(task_id=task_id, queue_id=str(queue["id"]), trace_id=queue["trace_id"], **ids)

    def _span_attributes(self, task: TaskRow) -> dict[str, object]:
        columns = {c: column(task, c) for c in self.engine.storage.span_columns}
        return {"queue_id": task["queue_id"], "task_id": task["id"], **columns}

    async def run_inline(self, intent: Intent) -> None:
        """An activity run right after the commit that asked for it (engine/inline.py).
        A failed attempt becomes a job, which retries it; if even that cannot be
        written, the sweep defers it later."""
        rows = (intent.task, intent.queue)
        try:
            outcome = await self.run_activity(intent.task_id, intent.activity, intent.token, rows)
            log.info("activity %s on task %s: %s", intent.activity, intent.task_id, outcome)
        except Exception as exc:
            log.warning(
                "activity %s on task %s failed in-process (%s); a job retries it",
                intent.activity,
                intent.task_id,
                type(exc).__name__,
            )
            async with self.pool.connection() as conn:
                await self.scheduler.defer_activity(
                    conn,
                    intent.task_id,
                    intent.activity,
                    intent.token,
                    delay_s=self.options.first_retry_s,
                )

    async def notify_inline(self, queue_id: str, outcome: JsonObject) -> None:
        """The final outcome, told right after the commit that made it final."""
        try:
            await self._deliver(queue_id, outcome)
        except Exception as exc:
            log.warning(
                "telling the outcome of %s failed (%s); a job retries it",
                queue_id,
                type(exc).__name__,
            )
            async with self.pool.connection() as conn:
                await self.scheduler.defer_notification(
                    conn, queue_id, delay_s=self.options.first_retry_s
                )

    async def fire_timer(self, conn: Conn, task_id: str, kind: str, due_at: datetime) -> None:
        """A due timer, in the pump's transaction (engine/timers.py, `fire_due`). If its
        event cannot be applied, the timer becomes a job in the same transaction:
        retried, and dead-lettered at the end, like any other step."""
        try:
            await self.deliver_timer(conn, task_id, kind, due_at)
        except psycopg.OperationalError:
            raise  # the timer's delete rolls back with it: the next pump takes it again
        except Exception as exc:
            log.warning("timer %s on task %s failed (%r); a job retries it", kind, task_id, exc)
            args = {"task_id": task_id, "kind": kind, "due_at": due_at.isoformat()}
            await self.jobs.defer_timer_job(conn, args)

    async def deliver_timer(self, conn: Conn, task_id: str, kind: str, due: datetime) -> None:
        metrics.TIMER_LATENESS.observe(max((datetime.now(UTC) - due).total_seconds(), 0.0))
        await self.engine.apply_timer(conn, task_id, kind, due, origin=Origin(actor="timer"))

    async def notify_outcome(self, queue_id: str) -> str:
        """Tell a queue's final outcome, then note that it was told."""
        if self.notice is None:
            return "disabled"
        async with self.pool.connection() as conn:
            outcome = await self.notice.read(conn, queue_id)
        if outcome is None:
            raise UnknownTask(queue_id)
        return await self._deliver(queue_id, outcome)

    async def _deliver(self, queue_id: str, outcome: JsonObject) -> str:
        if self.notice is None:
            return "disabled"
        await self.notice.send(outcome, trace_headers(outcome))
        async with self.pool.connection() as conn:
            await self.notice.mark_sent(conn, queue_id)
        return "delivered"


_LOAD = """
SELECT row_to_json(t) AS task, row_to_json(q) AS queue
FROM {tasks} t JOIN {queues} q ON q.id = t.queue_id WHERE t.id = %s
"""


def trace_headers(queue: Mapping[str, object]) -> dict[str, str]:
    """W3C trace context for an outbound call: the step's own span when tracing is on,
    else the stored trace of the queue (or outcome) with a fresh span id."""
    if tracing.enabled():  # the step's own span (a call's span is made at the edge)
        return tracing.outbound_headers()
    trace_id = queue.get("trace_id")
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"} if trace_id else {}
