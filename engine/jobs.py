"""Procrastinate jobs: the steps that must outlive the process that asked for them.

On the happy path a step runs right after the commit that asked for it
(engine/inline.py) and a due timer is delivered by the pump (engine/timers.py);
these jobs carry the rest:

- `activity(task_id, activity, token)`: a step that failed, overflowed or was
  lost with its process: run the side effect, then apply its event.
- `timer(task_id, kind, due_at)`: a due timer the pump could not deliver.
- `notify(queue_id)`: a final outcome not yet told (the shell's OutcomeNotice).
- the shell's own jobs (`ShellJob`; the withdrawal service's `webhook(inbox_id)`
  applies a stored provider webhook: service/webhook_inbox.py).
- `maintenance` (periodic): put the jobs of dead workers back in the queue, sweep
  for tasks that wait for nothing (engine/sweep.py), and purge finished jobs
  (engine/job_purge.py).
- `checks` (periodic, more often): the shell's own periodic work, in one worker
  at a time (the withdrawal service moves provider circuits: service/health.py).

A job only ever reads its arguments and the database, so any worker on any
host can run it, and running it twice is harmless (activity tokens and
idempotent calls).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import procrastinate
from psycopg_pool import AsyncConnectionPool

from engine import deadletters, logs
from engine.contracts import ShellJob
from engine.db import RECONNECT_WINDOW_S, check_idle_connection
from engine.job_purge import purge_jobs
from engine.journal import Conn
from engine.retry import CappedBackoff
from engine.rows import JsonObject
from engine.steps import Runtime
from engine.sweep import sweep

log = logging.getLogger("payment.jobs")


def _runtime(context: procrastinate.JobContext) -> Runtime:
    runtime = context.additional_context["runtime"]
    assert isinstance(runtime, Runtime)
    return runtime


async def _subject(runtime: Runtime, conn: Conn, name: str, kwargs: JsonObject) -> str | None:
    """The task a job is about: its `task_id`, or what its ShellJob says."""
    shell = runtime.shell_jobs.get(name)
    if shell is not None and shell.task_of is not None:
        return await shell.task_of(conn, kwargs)
    task_id = kwargs.get("task_id")
    return str(task_id) if task_id else None


async def _failed(runtime: Runtime, context: procrastinate.JobContext, exc: BaseException) -> None:
    job = context.job
    kwargs = dict(job.task_kwargs)
    async with runtime.pool.connection() as conn:
        task_id = await _subject(runtime, conn, job.task_name, kwargs)
    queue_id = kwargs.get("queue_id")
    failed = deadletters.FailedJob(job, exc, task_id, str(queue_id) if queue_id else None)
    await deadletters.record(runtime.pool, runtime.engine.storage, failed)


async def _bind_log_ids(runtime: Runtime, name: str, kwargs: JsonObject) -> None:
    """Every log line of this job (procrastinate's too) carries its queue's ids."""
    logs.bind(task_id=kwargs.get("task_id"))
    storage = runtime.engine.storage
    async with runtime.pool.connection() as conn:
        task_id = await _subject(runtime, conn, name, kwargs)
        queue_id = kwargs.get("queue_id")
        row = await deadletters.subject_of_job(conn, storage, task_id, queue_id)
    if row is not None:
        ids = {storage.key: row[storage.key]}
        logs.bind(task_id=row["task_id"], queue_id=str(row["id"]), trace_id=row["trace_id"], **ids)


@contextlib.asynccontextmanager
async def _dead_letter_on_final_failure(
    context: procrastinate.JobContext, bind_ids: bool = True
) -> AsyncIterator[Runtime]:
    """Yield the runtime; a failure that will not be retried becomes a dead letter."""
    runtime = _runtime(context)
    if bind_ids:
        await _bind_log_ids(runtime, context.job.task_name, dict(context.job.task_kwargs))
    try:
        yield runtime
    except Exception as exc:
        strategy = context.task.retry_strategy
        if strategy is None or strategy.get_retry_decision(exception=exc, job=context.job) is None:
            await _failed(runtime, context, exc)
        raise


async def activity_job(
    context: procrastinate.JobContext, task_id: str, activity: str, token: int
) -> None:
    # run_activity loads the task and its queue anyway, and binds the ids then.
    async with _dead_letter_on_final_failure(context, bind_ids=False) as runtime:
        outcome = await runtime.run_activity(task_id, activity, token)
    log.info("activity %s on task %s: %s", activity, task_id, outcome)


async def timer_job(
    context: procrastinate.JobContext, task_id: str, kind: str, due_at: str
) -> None:
    async with (
        _dead_letter_on_final_failure(context) as runtime,
        runtime.pool.connection() as conn,
    ):
        await runtime.deliver_timer(conn, task_id, kind, datetime.fromisoformat(due_at))


async def notify_job(context: procrastinate.JobContext, queue_id: str) -> None:
    async with _dead_letter_on_final_failure(context) as runtime:
        await runtime.notify_outcome(queue_id)


def _shell_job(name: str, shell: ShellJob) -> Callable[..., Awaitable[None]]:
    async def run(context: procrastinate.JobContext, **kwargs: Any) -> None:
        async with _dead_letter_on_final_failure(context) as runtime:
            await shell.run(runtime, **kwargs)

    run.__name__ = f"{name}_job"
    return run


async def maintenance_job(context: procrastinate.JobContext, timestamp: int) -> None:
    """Periodic, in one worker at a time: the jobs of dead workers go back in the
    queue, then the sweep (engine/sweep.py), then finished jobs are purged
    (engine/job_purge.py). One job, so that an idle deployment pays for one periodic
    hand-off, not three."""
    runtime = _runtime(context)
    manager = context.app.job_manager
    stalled_s = runtime.options.stalled_after_s
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=stalled_s):
        log.warning("retrying stalled job %s (%s)", job.id, job.task_name)
        await manager.retry_job(job)
    async with runtime.pool.connection() as conn:
        await sweep(conn, runtime.engine, runtime.options.sweep_grace_s, runtime.notice)
        if purged := await purge_jobs(conn):
            log.info("purged %d finished jobs", purged)


async def checks_job(context: procrastinate.JobContext, timestamp: int) -> None:
    runtime = _runtime(context)
    if runtime.periodic_checks is not None:
        async with runtime.pool.connection() as conn:
            await runtime.periodic_checks(conn)


def _job_pool(**options: Any) -> AsyncConnectionPool[Any]:
    """procrastinate's pool, with our check: its own is an empty query (a round trip
    and a server transaction) on every hand-out, most of an idle worker's load."""
    return AsyncConnectionPool(
        **{
            "min_size": 1,
            **options,
            "check": check_idle_connection,
            "reconnect_timeout": RECONNECT_WINDOW_S,
        }
    )


def build_app(
    conninfo: str,
    retry: CappedBackoff,
    maintenance_every_s: int = 15,
    pool_size: int = 10,
    checks_every_s: int = 5,
    shell_jobs: Mapping[str, ShellJob] | None = None,
) -> procrastinate.App:
    """The procrastinate app with every job; any worker on any host can run any of them.
    `pool_size`: its own connections (fetching, finishing, heartbeats); an API
    process defers on its transactions' connections and needs few."""
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo, pool_factory=_job_pool, max_size=pool_size
    )
    app = procrastinate.App(connector=connector)
    jobs: list[tuple[str, str, Callable[..., Awaitable[None]]]] = [
        ("activity", "activities", activity_job),
        ("timer", "timers", timer_job),
        ("notify", "notifications", notify_job),
    ]
    shells = shell_jobs or {}
    jobs += [(name, job.queue, _shell_job(name, job)) for name, job in shells.items()]
    for name, queue, function in jobs:
        task = app.task(name=name, queue=queue, retry=retry, pass_context=True)(function)
        if name in shells and (cron := shells[name].cron) is not None:
            app.periodic(cron=cron, periodic_id=name)(task)
    maintenance = app.task(
        name="maintenance", queue="maintenance", queueing_lock="maintenance", pass_context=True
    )(maintenance_job)
    # The 6th cron field is seconds. Every worker offers each tick; the queueing
    # lock and procrastinate's periodic ledger let one of them run it.
    app.periodic(cron=f"* * * * * */{maintenance_every_s}")(maintenance)
    checks = app.task(
        name="checks", queue="maintenance", queueing_lock="checks", pass_context=True
    )(checks_job)
    app.periodic(cron=f"* * * * * */{checks_every_s}")(checks)
    return app
