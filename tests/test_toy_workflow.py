"""The engine runs a toy workflow unchanged: its own states, its own tables.

Proof that the engine is generic (issue 20): tests/toy_workflow.py knows nothing
of withdrawals, and the same Engine, Runtime, scheduler, inline runner, journal
and queue rule drive it on toy_queues / toy_tasks / toy_events, with the outbox
subjects its Storage names, while the withdrawal tables stay empty.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from engine import commit_hooks
from engine.activity import Activity, ActivityContext
from engine.contracts import Origin
from engine.db import Pool, open_pool
from engine.inline import InlineRunner
from engine.jobs import build_app
from engine.migrations import migrate
from engine.retry import CappedBackoff
from engine.rows import column
from engine.steps import Runtime
from tests.conftest import fresh_database
from tests.toy_workflow import TABLES, TOY_DEFINITIONS, Worked
from workflows.core import Event


@pytest.fixture(scope="module")
def toy_url() -> Iterator[str]:
    with fresh_database("_toy") as url:
        migrate(url)  # the engine's own tables: outbox, timers, dead letters, jobs
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(TABLES)
        yield url


class Workers:
    """The toy's one activity: a worker named "broken" always fails."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def work(self, ctx: ActivityContext) -> Event:
        worker = str(column(ctx.task, "worker"))
        self.calls.append(worker)
        return Worked(ok=worker != "broken")


@pytest.fixture
async def toy_runtime(toy_url: str) -> AsyncIterator[tuple[Runtime, Workers]]:
    app = build_app(toy_url, CappedBackoff(1, 1, 1))
    await app.open_async()
    pool: Pool = await open_pool(toy_url, max_size=4)
    workers = Workers()
    runtime = Runtime(
        TOY_DEFINITIONS,
        pool,
        {"work": Activity(workers.work)},
        app=app,
        runner=InlineRunner(2, 64, 15.0),
    )
    try:
        yield runtime, workers
    finally:
        await pool.close()
        await app.close_async()


async def _submit(runtime: Runtime, ticket: str, workers: list[str]) -> str:
    queue_id = str(uuid.uuid4())
    with commit_hooks.transaction_scope():
        async with runtime.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO toy_queues (id, ticket) VALUES (%s, %s)", (queue_id, ticket)
            )
            for position, worker in enumerate(workers):
                await conn.execute(
                    "INSERT INTO toy_tasks (id, queue_id, position, worker)"
                    " VALUES (%s, %s, %s, %s)",
                    (str(uuid.uuid4()), queue_id, position, worker),
                )
            await runtime.engine.activate(conn, queue_id, Origin(actor="toy-test"))
    return queue_id


async def _final_status(runtime: Runtime, queue_id: str, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with runtime.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT status FROM toy_queues WHERE id = %s", (queue_id,))
            ).fetchone()
        if row is not None and row["status"] != "ACTIVE":
            return str(row["status"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"toy queue {queue_id} still active after {timeout_s}s")


async def _rows(runtime: Runtime, query: str, *args: object) -> list[tuple[object, ...]]:
    async with runtime.pool.connection() as conn:
        rows = await (await conn.execute(query, args)).fetchall()
    return [tuple(r.values()) for r in rows]


async def test_toy_workflow_runs_on_the_engine_unchanged(
    toy_runtime: tuple[Runtime, Workers],
) -> None:
    runtime, workers = toy_runtime
    queue_id = await _submit(runtime, "toy-1", ["broken", "steady", "spare"])
    assert await _final_status(runtime, queue_id) == "COMPLETED"
    assert workers.calls == ["broken", "broken", "steady"]  # one retry, then the next
    tasks = await _rows(
        runtime,
        "SELECT worker, status, tries FROM toy_tasks WHERE queue_id = %s ORDER BY position",
        queue_id,
    )
    assert tasks == [("broken", "FAILED", 2), ("steady", "DONE", 1), ("spare", "CANCELLED", 0)]
    audit = await _rows(
        runtime,
        "SELECT from_state, to_state FROM toy_events WHERE queue_id = %s ORDER BY id",
        queue_id,
    )
    assert audit[:3] == [("NEW", "WORKING"), ("WORKING", "WORKING"), ("WORKING", "FAILED")]
    assert audit[-1] == ("ACTIVE", "COMPLETED")  # the queue's own transition
    subjects = await _rows(
        runtime,
        "SELECT DISTINCT subject, payload->>'ticket' FROM outbox WHERE queue_id = %s",
        queue_id,
    )
    assert {s for s, _ in subjects} >= {"toy.task.working", "toy.task.done", "toy.queue.completed"}
    assert {t for _, t in subjects} == {"toy-1"}  # the storage's key, in every event
    untouched = await _rows(runtime, "SELECT count(*) FROM order_tasks")
    assert untouched == [(0,)]


async def test_toy_queue_with_only_failures_fails(toy_runtime: tuple[Runtime, Workers]) -> None:
    runtime, workers = toy_runtime
    queue_id = await _submit(runtime, "toy-2", ["broken"])
    assert await _final_status(runtime, queue_id) == "FAILED"
    assert workers.calls == ["broken", "broken"]
