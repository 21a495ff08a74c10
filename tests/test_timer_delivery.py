"""The pump delivers due timers itself, each in the transaction that takes it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from engine import commit_hooks
from engine.db import Pool, open_pool
from engine.journal import Conn
from engine.migrations import migrate
from engine.timers import fire_due
from tests.conftest import fresh_database


@pytest.fixture(scope="module")
def timers_url() -> Iterator[str]:
    with fresh_database("_timers") as url:
        migrate(url)
        yield url


@pytest.fixture
async def pool(timers_url: str) -> AsyncIterator[Pool]:
    pool = await open_pool(timers_url, max_size=2)
    try:
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM timers")
        yield pool
    finally:
        await pool.close()


async def _timer(pool: Pool, kind: str, due_in_s: float) -> None:
    queue_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor,"
            " currency) VALUES (%s, %s, 'h', 'm', 100, 'EUR')",
            (queue_id, f"timer-{queue_id}"),
        )
        await conn.execute(
            "INSERT INTO order_tasks (id, queue_id, position, provider) VALUES (%s, %s, 0, 'a')",
            (task_id, queue_id),
        )
        due = datetime.now(UTC) + timedelta(seconds=due_in_s)
        await conn.execute(
            "INSERT INTO timers (task_id, kind, due_at) VALUES (%s, %s, %s)", (task_id, kind, due)
        )


async def _kinds(pool: Pool) -> list[str]:
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT kind FROM timers ORDER BY kind")).fetchall()
    return [r["kind"] for r in rows]


async def test_due_timers_fire_once_in_their_own_transaction(pool: Pool) -> None:
    await _timer(pool, "due-1", -2)
    await _timer(pool, "due-2", -1)
    await _timer(pool, "later", 600)
    fired: list[tuple[str, bool]] = []
    after_commit: list[str] = []

    async def fire(conn: Conn, task_id: str, kind: str, due_at: datetime) -> None:
        # inside the transaction that deleted it: no other session can see it gone
        fired.append((kind, conn.info.transaction_status.name == "INTRANS"))
        commit_hooks.on_commit(lambda: after_commit.append(kind))

    count, wait_s = await fire_due(pool, fire)
    assert (count, fired) == (2, [("due-1", True), ("due-2", True)])
    assert after_commit == ["due-1", "due-2"]  # their steps start once each commits
    assert wait_s is not None and 590 < wait_s <= 600
    assert await _kinds(pool) == ["later"]
    again, _ = await fire_due(pool, fire)
    assert again == 0


async def test_a_delivery_that_fails_leaves_its_timer_for_the_next_pump(pool: Pool) -> None:
    await _timer(pool, "due", -1)

    async def fire(conn: Conn, task_id: str, kind: str, due_at: datetime) -> None:
        await conn.execute("UPDATE order_tasks SET last_reason = 'half done'")
        raise ConnectionError("the database went away mid-delivery")

    with pytest.raises(ConnectionError):
        await fire_due(pool, fire)
    assert await _kinds(pool) == ["due"]  # not lost: the delete rolled back too
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) AS n FROM order_tasks WHERE last_reason IS NOT NULL"
            )
        ).fetchone()
    assert row is not None and row["n"] == 0
