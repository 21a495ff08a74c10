"""The bodies of the steps, whoever runs them: right after a commit (engine/inline.py),
a procrastinate job (engine/jobs.py), or the timer pump (engine/timers.py)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from engine import logs, metrics, notifications, tracing
from engine.activity import Activity, ActivityContext
from engine.contracts import Origin, StaleEvent, UnknownTask
from engine.engine import Engine
from engine.inline import Intent
from engine.journal import Conn
from engine.scheduler import ProcrastinateScheduler
from workflows.core import Event, IllegalTransition

log = logging.getLogger("payment.jobs")  # the name operators already search for
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
    # The shell's periodic work (the `checks` job), run by one worker at a time.
    periodic_checks: Callable[[Conn], Awaitable[object]] | None = None

    @property
    def scheduler(self) -> ProcrastinateScheduler:
        scheduler = self.engine.scheduler
        assert isinstance(scheduler, ProcrastinateScheduler)
        return scheduler


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


def _trace_headers(queue: dict[str, Any]) -> dict[str, str]:
    if tracing.enabled():  # the step's own span (a call's span is made at the edge)
        return tracing.outbound_headers()
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
        attributes = {"queue_id": queue["id"], "task_id": task_id, "provider": task["provider"]}
        try:
            with tracing.withdrawal_span(f"step {name}", queue.get("traceparent"), attributes):
                ctx = ActivityContext(task, queue, _trace_headers(queue))
                event = await spec.run(ctx)
                await runtime.engine.apply(
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


async def fire_timer(runtime: Runtime, conn: Conn, row: dict[str, Any]) -> None:
    """A due timer, in the pump's transaction (engine/timers.py, `fire_due`). If its
    event cannot be applied, the timer becomes a job in the same transaction:
    retried, and dead-lettered at the end, like any other step."""
    try:
        await deliver_timer(runtime, conn, row["task_id"], row["kind"], row["due_at"])
    except psycopg.OperationalError:
        raise  # the timer's delete rolls back with it: the next pump takes it again
    except Exception as exc:
        log.warning(
            "timer %s on task %s failed (%r); a job retries it", row["kind"], row["task_id"], exc
        )
        args = {"task_id": row["task_id"], "kind": row["kind"], "due_at": row["due_at"].isoformat()}
        await runtime.scheduler.defer_timer_job(conn, args)


async def deliver_timer(
    runtime: Runtime, conn: Conn, task_id: str, kind: str, due: datetime
) -> None:
    metrics.TIMER_LATENESS.observe(max((datetime.now(UTC) - due).total_seconds(), 0.0))
    await runtime.engine.apply_timer(conn, task_id, kind, due, origin=Origin(actor="timer"))


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
