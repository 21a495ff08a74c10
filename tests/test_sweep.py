"""The sweep finds live tasks that wait for nothing: it re-defers a lost job, or flags."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from engine.db import Pool, open_pool
from engine.engine import Engine, EngineHooks
from engine.jobs import build_app
from engine.migrations import migrate
from engine.retry import CappedBackoff
from engine.scheduler import ProcrastinateScheduler
from engine.sweep import sweep
from service.models import WithdrawalRequest
from service.notifications import CoreOutcomes
from service.withdrawals import submit
from tests.conftest import fresh_database
from workflows.registry import DEFINITIONS
from workflows.withdrawal_events import Timing


async def _never_sent(_outcome: object, _headers: object) -> None:
    raise AssertionError("the sweep only defers notifications; it sends none")


NOTICE = CoreOutcomes(_never_sent)


@pytest.fixture(scope="module")
def sweep_url() -> Iterator[str]:
    """Its own database: a sweep with no grace must see only this module's tasks."""
    with fresh_database("_sweep") as url:
        migrate(url)
        yield url


@pytest.fixture
async def parts(sweep_url: str) -> AsyncIterator[tuple[Pool, Engine]]:
    app = build_app(sweep_url, CappedBackoff(1, 1, 1))
    await app.open_async()
    pool = await open_pool(sweep_url, max_size=2)
    try:
        scheduler = ProcrastinateScheduler(app, notice=NOTICE)
        yield pool, Engine(DEFINITIONS, scheduler, EngineHooks(context_for=lambda _row: Timing()))
    finally:
        await pool.close()
        await app.close_async()


async def _creating_task(pool: Pool, engine: Engine) -> tuple[str, str]:
    """A new withdrawal: its first task is CREATING with a freeze job queued."""
    request = WithdrawalRequest(
        order_id=f"sweep-{uuid.uuid4().hex[:10]}",
        merchant_id="m",
        amount="5.00",
        currency="EUR",
        cascade=["alpha"],
    )
    async with pool.connection() as conn:
        queue_id, _ = await submit(conn, engine, request, None)
        row = await (
            await conn.execute("SELECT id::text FROM order_tasks WHERE queue_id = %s", (queue_id,))
        ).fetchone()
    assert row is not None
    return str(queue_id), row["id"]


async def _one(pool: Pool, query: str, *args: Any) -> Any:
    async with pool.connection() as conn:
        row = await (await conn.execute(query, args)).fetchone()
    return None if row is None else next(iter(row.values()))


async def test_a_job_that_failed_without_its_dead_letter_is_deferred_again(
    parts: tuple[Pool, Engine],
) -> None:
    pool, engine = parts
    queue_id, task_id = await _creating_task(pool, engine)
    async with pool.connection() as conn:
        # the worker failed the job for good, and the database was gone before the
        # dead letter could be written
        await conn.execute(
            "UPDATE procrastinate_jobs SET status = 'failed' WHERE args->>'task_id' = %s",
            (task_id,),
        )
        quiet = await sweep(conn, engine, 3600)
        done = await sweep(conn, engine, 0)
    assert quiet == {"repaired": 0, "flagged": 0, "renotified": 0}
    assert done == {"repaired": 1, "flagged": 0, "renotified": 0}
    todo = await _one(
        pool,
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND args->>'task_id' = %s"
        " AND args->>'activity' = 'freeze'",
        task_id,
    )
    assert todo == 1
    assert (
        await _one(pool, "SELECT needs_attention FROM order_queues WHERE id = %s", queue_id)
        is False
    )


async def test_a_step_lost_with_the_process_running_it_is_deferred_again(
    parts: tuple[Pool, Engine],
) -> None:
    """A step runs right after its commit in the process that made it; if that
    process dies, no job exists at all. The row names the activity and its token."""
    pool, engine = parts
    _, task_id = await _creating_task(pool, engine)
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM procrastinate_jobs WHERE args->>'task_id' = %s", (task_id,))
        done = await sweep(conn, engine, 0)
    assert done == {"repaired": 1, "flagged": 0, "renotified": 0}
    job = await _one(
        pool,
        "SELECT args->>'token' FROM procrastinate_jobs WHERE status = 'todo'"
        " AND args->>'task_id' = %s AND args->>'activity' = 'freeze'",
        task_id,
    )
    token = await _one(pool, "SELECT activity_token FROM order_tasks WHERE id = %s", task_id)
    assert job == str(token)


async def test_a_task_waiting_for_no_job_and_no_timer_is_flagged_once(
    parts: tuple[Pool, Engine],
) -> None:
    pool, engine = parts
    queue_id, task_id = await _creating_task(pool, engine)
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM procrastinate_jobs WHERE args->>'task_id' = %s", (task_id,))
        # nothing says what it waits for
        await conn.execute(
            "UPDATE order_tasks SET activity = NULL, activity_token = NULL WHERE id = %s",
            (task_id,),
        )
        first = await sweep(conn, engine, 0)
        second = await sweep(conn, engine, 0)
    assert first == {"repaired": 0, "flagged": 1, "renotified": 0}
    reason = await _one(pool, "SELECT attention_reason FROM order_queues WHERE id = %s", queue_id)
    assert reason.startswith("stuck: task " + task_id)
    assert second == {
        "repaired": 0,
        "flagged": 0,
        "renotified": 0,
    }  # flagged once, not on every pass


async def test_an_outcome_never_told_to_cascade_core_is_told_again(
    parts: tuple[Pool, Engine],
) -> None:
    """The process that finished a withdrawal died before telling cascade-core."""
    pool, engine = parts
    queue_id, _ = await _creating_task(pool, engine)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE order_queues SET status = 'FAILED', finished_at = now() - interval '1 hour'"
            " WHERE id = %s",
            (queue_id,),
        )
        off = await sweep(conn, engine, 60)
        on = await sweep(conn, engine, 60, NOTICE)
        again = await sweep(conn, engine, 60, NOTICE)
    assert off["renotified"] == 0  # notifications off: nobody to tell
    assert (on["renotified"], again["renotified"]) == (1, 0)  # its job is queued now
    jobs = await _one(
        pool,
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'notify'"
        " AND status = 'todo' AND args->>'queue_id' = %s",
        queue_id,
    )
    assert jobs == 1
