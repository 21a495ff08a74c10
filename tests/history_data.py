"""Withdrawals with histories, written as the service writes them, for the audit
trail's partition and archive tests (tests/test_history.py, tests/test_archive.py).

Queue and task rows are inserted directly (their state is what a test needs, not
what a provider did); every audit row goes through the engine's own writer,
engine/journal.py, so it is keyed as the service keys it."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine.journal import Entry, journal
from engine.migrations import migrate
from engine.rows import as_queue
from tests.conftest import fresh_database
from workflows.withdrawal_definition import STORAGE


@contextlib.contextmanager
def migrated_database(suffix: str) -> Iterator[str]:
    """A database of its own: the shared one's withdrawals would keep its months."""
    with fresh_database(suffix) as url:
        migrate(url)
        yield url


_QUEUE = """
INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor, currency,
                          status, created_at, finished_at, core_notified_at)
VALUES (%s, %s, 'h', 'merchant-1', %s, 'EUR', %s, %s, CASE WHEN %s <> 'ACTIVE' THEN %s END,
        CASE WHEN %s <> 'ACTIVE' THEN %s END)
"""
_TASK = """
INSERT INTO order_tasks (id, queue_id, position, provider, status, funds, provider_ref)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""
# (provider, status, funds) of each task, by the withdrawal's status
TASKS = {
    "COMPLETED": [("alpha", "FAILED", "RELEASED"), ("beta", "SUCCEEDED", "COMMITTED")],
    "FAILED": [("alpha", "FAILED", "RELEASED")],
    "ACTIVE": [("alpha", "EXECUTING", "FROZEN")],
    "MANUAL": [("alpha", "MANUAL_CHECK", "FROZEN")],
}


async def withdrawal(
    url: str, created_at: datetime, kind: str = "COMPLETED", rng: random.Random | None = None
) -> dict[str, Any]:
    """A withdrawal submitted at `created_at`, its tasks as TASKS[kind] has them, and a
    history of a few audit rows per task; its queue row."""
    rng = rng or random.Random(f"{created_at} {kind}")  # seeded: the same rows every run
    status = "ACTIVE" if kind == "MANUAL" else kind
    queue_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    order_id = f"order-{queue_id.hex[:12]}"
    async with await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as conn:
        amount = rng.randint(100, 1_000_000)
        await conn.execute(
            _QUEUE,
            (queue_id, order_id, amount, status, created_at, *(status, created_at) * 2),
        )
        queue: dict[str, Any] | None = await (
            await conn.execute("SELECT * FROM order_queues WHERE id = %s", (queue_id,))
        ).fetchone()
        assert queue is not None
        for position, (provider, task_status, funds) in enumerate(TASKS[kind]):
            task_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            ref = f"ref-{rng.getrandbits(32):08x}"
            await conn.execute(
                _TASK, (task_id, queue_id, position, provider, task_status, funds, ref)
            )
            for to_state in ("CREATING", "EXECUTING", task_status):
                event = f"to_{to_state.lower()}"
                # a payload CSV must quote: a comma, a line break, a quote
                payload = {"event": event, "amount": amount, "note": 'a,b\n"c"'}
                subject = f"task.{to_state.lower()}"
                entry = Entry(
                    subject, str(task_id), "PENDING", to_state, event, payload, "worker", None
                )
                await journal(conn, STORAGE, as_queue(queue), entry)
        if status != "ACTIVE":
            entry = Entry(
                f"queue.{status.lower()}",
                None,
                "ACTIVE",
                status,
                f"queue_{status.lower()}",
                {},
                "worker",
                None,
            )
            await journal(conn, STORAGE, as_queue(queue), entry)
        await conn.commit()
    return queue


# Every column; the key as text: psycopg reads no infinite timestamp into a datetime,
# and the rows from before partitioning have '-infinity'.
EVENT_COLUMNS = (
    "id, queue_id, task_id, from_state, to_state, event_type, payload, actor, trace_id,"
    " occurred_at, queue_created_at::text AS queue_created_at"
)


def timeline_rows(url: str, queue_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every audit row of the withdrawal, whole, in order."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM order_task_events WHERE queue_id = %s ORDER BY id",
            (queue_id,),
        ).fetchall()


def partition_of(url: str, event_id: int) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT tableoid::regclass::text FROM order_task_events WHERE id = %s", (event_id,)
        ).fetchone()
    assert row is not None
    return str(row[0])


def months(url: str) -> list[tuple[str, datetime]]:
    """The month partitions after the first one, in order: (name, a moment in it). The
    first partition runs to the end of the month the database was made in, so these
    are ahead of today, whenever the test runs."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT name, lower FROM v_event_partitions WHERE lower IS NOT NULL ORDER BY lower"
        ).fetchall()
    return [(str(name), lower + timedelta(days=9, hours=8, minutes=30)) for name, lower in rows]
