"""Procrastinate jobs: every step of every workflow runs as one of these.

- `activity(task_id, activity, token)`: run a side effect, then apply its event.
- `timer(task_id, kind, due_at)`: deliver a durable timer's event.
- `webhook(inbox_id)`: apply a verified, stored provider webhook.
- `maintenance` (periodic): put the jobs of dead workers back in the queue, and
  sweep for tasks that wait for nothing (engine/sweep.py).

A job only ever reads its arguments and the database, so any worker on any
host can run it, and running it twice is harmless (activity tokens and
idempotent calls).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import procrastinate
from psycopg_pool import AsyncConnectionPool

from engine import deadletters, logs, metrics, notifications
from engine.activity import Activity, ActivityContext
from engine.contracts import Origin, StaleEvent, UnknownTask
from engine.db import check_idle_connection
from engine.engine import Engine
from engine.inline import Intent
from engine.journal import Conn
from engine.retry import CappedBackoff
from engine.scheduler import ProcrastinateScheduler
from engine.sweep import sweep
from engine.webhooks import apply_webhook
from workflows.core import Event, IllegalTransition

log = logging.getLogger("payment.jobs")
WebhookTranslator = Callable[[dict[str, Any]], tuple[str, Event]]


@dataclass
class Runtime:
    """Everything a job needs, built once per worker process."""

    engine: Engine
    pool: AsyncConnectionPool[Conn]
    activities: Mapping[str, Activity]
    translate_webhook: WebhookTranslator
    # The queue's final outcome -> cascade-core (None: notifications are off).
    notify: notifications.Notify | None = None
    stalled_after_s: float = 10.0
    sweep_grace_s: float = 60.0  # how long a live task may wait for nothing
    first_retry_s: float = 1.0  # a step that failed in-process is retried as a job after this

    @property
    def scheduler(self) -> ProcrastinateScheduler:
        scheduler = self.engine.scheduler
        assert isinstance(scheduler, ProcrastinateScheduler)
        return scheduler


def _runtime(context: procrastinate.JobContext) -> Runtime:
    runtime = context.additional_context["runtime"]
    assert isinstance(runtime, Runtime)
    return runtime


async def _load(conn: Conn, task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cur = await conn.execute(
        "SELECT row_to_json(t) AS task, row_to_json(q) AS queue FROM order_tasks t"
        " JOIN order_queues q ON q.id = t.queue_id WHERE t.id = %s",
        (task_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise UnknownTask(task_id)
    return row["task"], row["queue"]


async def _bind_log_ids(runtime: Runtime, kwargs: dict[str, Any]) -> None:
    """Every log line of this job (procrastinate's too) carries the withdrawal's ids."""
    logs.bind(task_id=kwargs.get("task_id"))
    async with runtime.pool.connection() as conn:
        row = await deadletters.withdrawal_of_job(conn, kwargs)
    if row is not None:
        logs.bind(
            task_id=row["task_id"],
            queue_id=str(row["id"]),
            order_id=row["order_id"],
            trace_id=row["trace_id"],
        )


def _trace_headers(queue: dict[str, Any]) -> dict[str, str]:
    trace_id = queue.get("trace_id")
    # W3C trace context: the withdrawal's trace, a fresh span id for this call.
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"} if trace_id else {}


Rows = tuple[dict[str, Any], dict[str, Any]]


async def run_activity(
    runtime: Runtime, task_id: str, name: str, token: int, rows: Rows | None = None
) -> str:
    """Run one activity; returns what happened (for logs and tests). `rows`: the
    task and queue as the transition that asked for it left them (else read here)."""
    async with runtime.pool.connection() as conn:
        task, queue = rows if rows is not None else await _load(conn, task_id)
        logs.bind(
            task_id=task_id,
            queue_id=queue["id"],
            order_id=queue["order_id"],
            trace_id=queue["trace_id"],
        )
        if task["activity_token"] != token:
            return "stale"
        spec = runtime.activities[name]
        ctx = ActivityContext(task, queue, _trace_headers(queue))
        try:
            event = await spec.run(ctx)
            await runtime.engine.apply(conn, task_id, event, result_of=token, strict=spec.guarded)
        except StaleEvent:
            return "stale"
        except Exception as exc:
            # A failed attempt for a task that moved on meanwhile no longer matters: a
            # guarded result whose call was superseded (a freeze refused because a cancel
            # voided the hold), or a settlement run twice (a stalled job retried while
            # it ran) whose other run applied first and consumed the token.
            moved_on = spec.guarded or isinstance(exc, IllegalTransition)
            if moved_on and (await _load(conn, task_id))[0]["activity_token"] != token:
                return "stale"
            raise
        return "applied"


async def run_inline(runtime: Runtime, intent: Intent) -> None:
    """An activity run right after the commit that asked for it (engine/inline.py).
    A failed attempt becomes a job, which retries it; if even that cannot be
    written, the sweep defers it later."""
    rows = (intent.task, intent.queue)
    try:
        outcome = await run_activity(runtime, intent.task_id, intent.activity, intent.token, rows)
        log.info("activity %s on task %s: %s", intent.activity, intent.task_id, outcome)
    except Exception as exc:
        log.warning(
            "activity %s on task %s failed in-process (%s); a job retries it",
            intent.activity,
            intent.task_id,
            type(exc).__name__,
        )
        async with runtime.pool.connection() as conn:
            await runtime.scheduler.defer_activity(
                conn, intent.task_id, intent.activity, intent.token, delay_s=runtime.first_retry_s
            )


async def notify_inline(runtime: Runtime, row: dict[str, Any]) -> None:
    """The final outcome, told right after the commit that made it final."""
    try:
        await _deliver(runtime, row)
    except Exception as exc:
        log.warning(
            "notifying withdrawal %s failed (%s); a job retries it",
            row["withdrawal_id"],
            type(exc).__name__,
        )
        async with runtime.pool.connection() as conn:
            await runtime.scheduler.defer_notification(
                conn, row["withdrawal_id"], delay_s=runtime.first_retry_s
            )


@contextlib.asynccontextmanager
async def _dead_letter_on_final_failure(
    context: procrastinate.JobContext, bind_ids: bool = True
) -> AsyncIterator[Runtime]:
    """Yield the runtime; a failure that will not be retried becomes a dead letter."""
    runtime = _runtime(context)
    if bind_ids:
        await _bind_log_ids(runtime, context.job.task_kwargs)
    try:
        yield runtime
    except Exception as exc:
        strategy = context.task.retry_strategy
        if strategy is None or strategy.get_retry_decision(exception=exc, job=context.job) is None:
            await deadletters.record(runtime.pool, context.job, exc)
        raise


async def activity_job(
    context: procrastinate.JobContext, task_id: str, activity: str, token: int
) -> None:
    # run_activity loads the task and its withdrawal anyway, and binds the ids then.
    async with _dead_letter_on_final_failure(context, bind_ids=False) as runtime:
        outcome = await run_activity(runtime, task_id, activity, token)
    log.info("activity %s on task %s: %s", activity, task_id, outcome)


async def timer_job(
    context: procrastinate.JobContext, task_id: str, kind: str, due_at: str
) -> None:
    async with _dead_letter_on_final_failure(context) as runtime:
        due = datetime.fromisoformat(due_at)
        metrics.TIMER_LATENESS.observe(max((datetime.now(UTC) - due).total_seconds(), 0.0))
        event = runtime.engine.definition.timer_event(kind, due)
        async with runtime.pool.connection() as conn:
            await runtime.engine.apply(conn, task_id, event, origin=Origin(actor="timer"))


async def webhook_job(context: procrastinate.JobContext, inbox_id: int) -> None:
    async with _dead_letter_on_final_failure(context) as runtime:
        await apply_webhook(runtime, inbox_id)


async def notify_job(context: procrastinate.JobContext, queue_id: str) -> None:
    async with _dead_letter_on_final_failure(context) as runtime:
        await notify_outcome(runtime, queue_id)


async def maintenance_job(context: procrastinate.JobContext, timestamp: int) -> None:
    """Periodic, in one worker at a time: the jobs of dead workers go back in the
    queue, then the sweep (engine/sweep.py). One job, so that an idle deployment
    pays for one periodic hand-off, not two."""
    runtime = _runtime(context)
    manager = context.app.job_manager
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=runtime.stalled_after_s):
        log.warning("retrying stalled job %s (%s)", job.id, job.task_name)
        await manager.retry_job(job)
    async with runtime.pool.connection() as conn:
        await sweep(
            conn,
            runtime.engine.scheduler,
            runtime.sweep_grace_s,
            notifications=runtime.notify is not None,
        )


def _job_pool(**options: Any) -> AsyncConnectionPool[Any]:
    """procrastinate's pool, with our check: its own is an empty query (a round trip
    and a server transaction) on every hand-out, most of an idle worker's load."""
    return AsyncConnectionPool(**{**options, "check": check_idle_connection})


def build_app(
    conninfo: str, retry: CappedBackoff, maintenance_every_s: int = 15
) -> procrastinate.App:
    """The procrastinate app with every job; any worker on any host can run any of them."""
    connector = procrastinate.PsycopgConnector(conninfo=conninfo, pool_factory=_job_pool)
    app = procrastinate.App(connector=connector)
    for name, queue, function in (
        ("activity", "activities", activity_job),
        ("timer", "timers", timer_job),
        ("webhook", "webhooks", webhook_job),
        ("notify", "notifications", notify_job),
    ):
        app.task(name=name, queue=queue, retry=retry, pass_context=True)(function)
    maintenance = app.task(
        name="maintenance", queue="maintenance", queueing_lock="maintenance", pass_context=True
    )(maintenance_job)
    # The 6th cron field is seconds. Every worker offers each tick; the queueing
    # lock and procrastinate's periodic ledger let one of them run it.
    app.periodic(cron=f"* * * * * */{maintenance_every_s}")(maintenance)
    return app


async def notify_outcome(runtime: Runtime, queue_id: str) -> str:
    """Send the final outcome to cascade-core, then note that it was delivered."""
    if runtime.notify is None:
        return "disabled"
    async with runtime.pool.connection() as conn:
        row = await notifications.outcome_of(conn, queue_id)
    if row is None:
        raise UnknownTask(queue_id)
    return await _deliver(runtime, row)


async def _deliver(runtime: Runtime, row: dict[str, Any]) -> str:
    if runtime.notify is None:
        return "disabled"
    await runtime.notify(row, _trace_headers(row))
    async with runtime.pool.connection() as conn:
        await notifications.mark_delivered(conn, row["withdrawal_id"])
    return "delivered"
