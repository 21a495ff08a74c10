"""How retention drops a detached month (service/archive_detach.drop_indexes): its
indexes one at a time, each in its own transaction with a rest after it, then the
table with the catalog's record; and a run that died between two drops is finished
by the next one, with the archive reading back row for row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from service.archive import Archiver
from service.archive_cli import load
from service.archive_detach import drop_indexes
from service.history import add_months
from tests.history_data import EVENT_COLUMNS, migrated_database, months, timeline_rows, withdrawal

RETENTION = timedelta(days=90)
LATER = datetime(2200, 1, 1, tzinfo=UTC)


@pytest.fixture
def url() -> Iterator[str]:
    with migrated_database("_drop") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            add_months(conn, 3)
        yield url


def _indexes(conn: psycopg.Connection[tuple[object, ...]], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass ORDER BY 1",
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows]


async def test_the_indexes_go_one_transaction_at_a_time_then_the_table(url: str) -> None:
    name, moment = months(url)[0]
    await withdrawal(url, moment)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE order_task_events DETACH PARTITION {name}")
        before = _indexes(conn, name)
        assert len(before) >= 3 and f"{name}_pkey" in before
        seen_at_each_rest: list[list[str]] = []

        def rest() -> None:  # what another session sees then: the drop committed
            with psycopg.connect(url) as other:
                seen_at_each_rest.append(_indexes(other, name))

        dropped = drop_indexes(conn, name, rest)

        assert sorted(dropped) == before
        assert [len(seen) for seen in seen_at_each_rest] == list(range(len(before) - 1, -1, -1))
        assert conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() == (True,)


async def test_a_run_that_died_between_two_drops_is_finished(url: str, tmp_path: Path) -> None:
    name, moment = months(url)[0]
    queue = await withdrawal(url, moment)
    rows = timeline_rows(url, queue["id"])
    with psycopg.connect(url, autocommit=True) as conn:  # what a run that died left
        conn.execute(
            "INSERT INTO event_archives (partition, lower, upper)"
            " SELECT name, lower, upper FROM v_event_partitions WHERE name = %s",
            (name,),
        )
        conn.execute(f"ALTER TABLE order_task_events DETACH PARTITION {name}")
        conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_pkey")  # the first drop

    archiver = Archiver(
        url, tmp_path, RETENTION, block=2, clock=lambda: LATER, sleep=lambda _: None
    )
    report = archiver.run()

    assert report is not None and name in report.archived
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
        state = conn.execute("SELECT state FROM event_archives WHERE partition = %s", (name,))
        assert state.fetchone() == ("archived",)
    assert rows and timeline_rows(url, queue["id"]) == []  # left the hot tables
    with psycopg.connect(url, row_factory=dict_row) as conn:
        assert load(conn, tmp_path, queue["id"])
        archived = conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM archived_events WHERE queue_id = %s ORDER BY id",
            (queue["id"],),
        ).fetchall()
    assert archived == rows  # row for row, every column
