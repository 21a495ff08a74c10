"""The audit trail partitioned by month of each withdrawal's submission (migrations
0013-0015, service/history.py): where rows go, that every partition stays
append-only, that the migration moves an existing table over without reading or
rewriting it, and the purge of finished jobs (engine/job_purge.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from engine import migrations
from engine.migrations import migrate
from service.history import add_months, partitions
from tests.conftest import fresh_database
from tests.history_data import (
    migrated_database,
    months,
    partition_of,
    timeline_rows,
    withdrawal,
)

NO_PARTITION = datetime(2200, 1, 1, tzinfo=UTC)


@pytest.fixture
def url() -> Iterator[str]:
    with migrated_database("_hist") as url:  # the first partition, three months on
        yield url


async def test_a_withdrawals_whole_history_lies_in_its_months_partition(url: str) -> None:
    name, submitted = months(url)[2]
    queue = await withdrawal(url, submitted)
    rows = timeline_rows(url, queue["id"])
    with psycopg.connect(url) as conn:
        key = conn.execute("SELECT %s::timestamptz::text", (submitted,)).fetchone()
    assert key is not None and {r["queue_created_at"] for r in rows} == {key[0]}
    assert {partition_of(url, r["id"]) for r in rows} == {name}
    # A process of the release before partitioning writes no key: the row is keyed from
    # its withdrawal on its way in, and lies with the rest.
    with psycopg.connect(url) as conn:
        inserted = conn.execute(
            "INSERT INTO order_task_events (queue_id, event_type, actor)"
            " VALUES (%s, 'old_release', 'worker')",
            (queue["id"],),
        )
        assert inserted.rowcount == 0  # the default partition's trigger inserted it again
    rows = timeline_rows(url, queue["id"])
    assert rows[-1]["event_type"] == "old_release"
    assert partition_of(url, rows[-1]["id"]) == name


async def test_a_month_without_a_partition_lands_in_the_default_one(url: str) -> None:
    queue = await withdrawal(url, NO_PARTITION)
    rows = timeline_rows(url, queue["id"])
    assert rows
    assert {partition_of(url, r["id"]) for r in rows} == {"order_task_events_default"}


def _refused(table: str) -> list[str]:
    return [
        f"UPDATE {table} SET actor = 'someone else'",
        f"DELETE FROM {table}",
        f"TRUNCATE {table}",
    ]


def _populated(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT DISTINCT tableoid::regclass::text FROM order_task_events")
        return sorted(str(r[0]) for r in rows.fetchall())


async def test_every_partition_refuses_update_delete_and_truncate(url: str) -> None:
    name, submitted = months(url)[1]
    for created in (datetime(2020, 5, 1, tzinfo=UTC), submitted, NO_PARTITION):
        await withdrawal(url, created)  # rows in the first partition, a month, the default
    populated = _populated(url)
    assert populated == sorted([name, "order_task_events_default", "order_task_events_legacy"])
    with psycopg.connect(url) as conn:
        empty = {p.name for p in partitions(conn)} - set(populated)
    # Row triggers refuse rows (an empty partition has none to change); TRUNCATE is
    # refused everywhere.
    statements = [s for name in ["order_task_events", *populated] for s in _refused(name)]
    statements += [f"TRUNCATE {name}" for name in sorted(empty)]
    # moving a row to another partition is an update too
    statements.append("UPDATE order_task_events SET queue_created_at = %(month)s")
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM order_task_events").fetchone()
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement, {"month": submitted} if "%(" in statement else None)
        assert conn.execute("SELECT count(*) FROM order_task_events").fetchone() == before


async def test_a_partition_made_later_is_append_only_too(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        made = add_months(conn, 5)
    assert len(made) == 2  # the migration made three months ahead
    year, month = (int(part) for part in made[-1].rsplit("_", 2)[1:])
    await withdrawal(url, datetime(year, month, 2, tzinfo=UTC))
    assert made[-1] in _populated(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in _refused(made[-1]):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)


BEFORE = migrations.ours()[11].name  # 0012: the table as every release before had it
KEYED = migrations.ours()[13].name  # 0014: the key's index built, its check validated
PARTITIONED = migrations.ours()[14]  # 0015


def _files(conn: psycopg.Connection[dict[str, Any]], table: str) -> tuple[int, set[int]]:
    """The files behind a table and behind its indexes: a rewrite or a rebuild changes them."""
    row = conn.execute(
        "SELECT pg_relation_filenode(%(t)s::regclass) AS heap, array_agg(pg_relation_filenode("
        "indexrelid)) AS indexes FROM pg_index WHERE indrelid = %(t)s::regclass",
        {"t": table},
    ).fetchone()
    assert row is not None
    return row["heap"], set(row["indexes"])


def test_the_migration_moves_the_table_over_without_reading_or_rewriting_it() -> None:
    with fresh_database("_histmig") as url:
        migrate(url, upto=BEFORE)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            queue = _old_release_rows(conn, 5000)
            migrate(url, upto=KEYED)
            before = _files(conn, "order_task_events")
            said: list[str] = []
            conn.add_notice_handler(lambda notice: said.append(str(notice.message_primary)))
            with conn.transaction():  # 0015 as the runner applies it, its DEBUG lines heard
                conn.execute("SET LOCAL client_min_messages = debug1")
                conn.execute(PARTITIONED.sql)
            heap, indexes = _files(conn, "order_task_events_legacy")
            assert heap == before[0]  # the same file: attached, not rewritten
            assert len(indexes) == 4 and indexes < before[1]  # renamed, not rebuilt (less
            # the old key on id alone, dropped)
            assert any("order_task_events_legacy" in s and "implied by existing" in s for s in said)
            kept = conn.execute(
                "SELECT count(*) AS n, max(id) AS last, bool_and(queue_created_at = '-infinity')"
                " AS before_partitioning FROM order_task_events"
            ).fetchone()
            assert kept == {"n": 5000, "last": 5000, "before_partitioning": True}
            _old_release_rows(conn, 1, queue)  # the release before, writing on after 0015
            last = conn.execute(
                "SELECT id, tableoid::regclass::text AS partition, queue_created_at::text AS key"
                " FROM order_task_events ORDER BY id DESC LIMIT 1"
            ).fetchone()
        assert last is not None
        assert last["id"] == 5001  # the sequence goes on
        assert last["partition"] == "order_task_events_legacy"  # its withdrawal's month


def _old_release_rows(
    conn: psycopg.Connection[dict[str, Any]], n: int, queue: uuid.UUID | None = None
) -> uuid.UUID:
    """`n` audit rows as the release before writes them (no key), of a withdrawal
    submitted now (a new one unless given)."""
    if queue is None:
        queue = uuid.uuid4()
        conn.execute(
            "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor,"
            " currency) VALUES (%s, %s, 'h', 'm', 100, 'EUR')",
            (queue, f"old-{queue}"),
        )
    conn.execute(
        "INSERT INTO order_task_events (queue_id, event_type, actor, payload)"
        " SELECT %s, 'e' || i, 'worker', jsonb_build_object('i', i)"
        " FROM generate_series(1, %s) i",
        (queue, n),
    )
    return queue
