"""Retention with an archive (service/archive.py): a month leaves the hot tables whole,
once every withdrawal submitted in it may leave, and its archive reads back row for
row; a month with a withdrawal that must stay waits, and says why."""

from __future__ import annotations

import os
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from service import archive_detach
from service import archive_files as files
from service.archive import AHEAD_NICENESS, TABLE_DIR, Archiver
from service.archive_cli import load, show
from service.history import add_months
from service.settings import Settings
from tests.history_data import (
    EVENT_COLUMNS,
    migrated_database,
    months,
    timeline_rows,
    withdrawal,
)

RETENTION = timedelta(days=90)
LATER = datetime(2200, 1, 1, tzinfo=UTC)  # every month of this test is past retention then
MONTHS: list[tuple[str, datetime]] = []  # the fixture's: (partition, a moment in it)


def month(n: int) -> datetime:
    """A moment in the n-th month after the first partition's (n from 1)."""
    return MONTHS[n - 1][1]


def partition(n: int) -> str:
    return MONTHS[n - 1][0]


@pytest.fixture
def url() -> Iterator[str]:
    with migrated_database("_arch") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            add_months(conn, 11)  # ten months after the first partition's, at least
        MONTHS[:] = months(url)
        yield url


def archiver(url: str, root: Path, at: datetime = LATER, wait_s: float = 0.5) -> Archiver:
    """An archiver whose clock says `at`, writing blocks of two withdrawals; waiting
    `wait_s` for older transactions before it writes ahead (service/archive_settled)."""
    return Archiver(url, root, RETENTION, block=2, clock=lambda: at, settle_wait_s=wait_s)


def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


def hot_timeline(url: str, queue_id: uuid.UUID) -> list[dict[str, Any]]:
    """What `service.ops timeline` prints."""
    return query(
        url,
        "SELECT event_id, occurred_at, provider, from_state, to_state, event_type, actor"
        " FROM v_withdrawal_timeline WHERE queue_id = %s ORDER BY event_id",
        queue_id,
    )


def archived_rows(url: str, root: Path, queue_id: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    """The withdrawal's rows as its archive holds them: events, queue and tasks."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        assert load(conn, root, queue_id)
        found = {
            "events": f"SELECT {EVENT_COLUMNS} FROM archived_events"
            " WHERE queue_id = %s ORDER BY id",
            "queues": "SELECT * FROM archived_queues WHERE id = %s",
            "tasks": "SELECT * FROM archived_tasks WHERE queue_id = %s ORDER BY position",
        }
        return {name: conn.execute(sql, (queue_id,)).fetchall() for name, sql in found.items()}


async def test_a_month_leaves_whole_and_its_archive_reads_back_row_for_row(
    url: str, tmp_path: Path
) -> None:
    # Five withdrawals in January (blocks of two: three blocks), a failed one among them.
    queues = [await withdrawal(url, month(1) + timedelta(hours=i)) for i in range(4)]
    queues.append(await withdrawal(url, month(1) + timedelta(days=3), "FAILED"))
    february = await withdrawal(url, month(2))
    before = {q["id"]: (timeline_rows(url, q["id"]), hot_timeline(url, q["id"])) for q in queues}
    hot_rows = {
        q["id"]: query(
            url, "SELECT * FROM order_tasks WHERE queue_id = %s ORDER BY position", q["id"]
        )
        for q in queues
    }

    # January's end was 90 days ago; February's not yet.
    due = MONTHS[1][1].replace(day=1, hour=0, minute=0) + RETENTION + timedelta(days=1)
    report = archiver(url, tmp_path, at=due).run()

    assert report is not None and not report.blocked
    assert report.archived == ["order_task_events_legacy", partition(1)]
    left = query(url, "SELECT to_regclass(%s) IS NULL AS gone", partition(1))
    assert left == [{"gone": True}]
    directory = tmp_path / TABLE_DIR / partition(1)
    manifest = files.verify(directory)
    assert manifest.withdrawals == 5
    assert manifest.files["events"].rows == sum(len(rows) for rows, _ in before.values())
    assert manifest.files["blocks"].rows == 3
    catalog = query(url, "SELECT * FROM event_archives WHERE partition = %s", partition(1))
    assert (
        catalog[0]["state"] == "archived" and catalog[0]["events"] == manifest.files["events"].rows
    )
    settings = Settings(database_url=url, archive_dir=tmp_path)
    for queue in queues:
        rows, timeline = before[queue["id"]]
        assert timeline_rows(url, queue["id"]) == []  # gone from the hot tables
        archived = archived_rows(url, tmp_path, queue["id"])
        assert archived["events"] == rows  # row for row, every column
        assert archived["tasks"] == hot_rows[queue["id"]]
        assert show(settings, queue["id"]) == timeline  # what `archive show` prints
    assert timeline_rows(url, february["id"])  # February's month is not due yet


async def test_an_event_after_its_month_left_stays_hot_and_shows_with_the_archive(
    url: str, tmp_path: Path
) -> None:
    queue = await withdrawal(url, month(3))
    archived = hot_timeline(url, queue["id"])
    assert archiver(url, tmp_path).run() is not None
    with psycopg.connect(url) as conn:  # e.g. a provider's late word on a final withdrawal
        conn.execute(
            "INSERT INTO order_task_events (queue_id, event_type, actor, queue_created_at)"
            " VALUES (%s, 'late_webhook', 'provider', %s)",
            (queue["id"], queue["created_at"]),
        )
    shown = show(Settings(database_url=url, archive_dir=tmp_path), queue["id"])
    assert shown[: len(archived)] == archived
    assert [r["event_type"] for r in shown[len(archived) :]] == ["late_webhook"]


# Each must keep its month in the hot tables, whatever its age.
async def _not_final(url: str) -> dict[str, Any]:
    return await withdrawal(url, month(4), "ACTIVE")


async def _manual_check(url: str) -> dict[str, Any]:
    return await withdrawal(url, month(5), "MANUAL")


async def _dead_letter(url: str) -> dict[str, Any]:
    queue = await withdrawal(url, month(6))
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO dead_letters (job_id, task_name, args, queue_id, attempts, error)"
            " VALUES (4242, 'notify', '{}', %s, 70, 'cascade-core unreachable')",
            (queue["id"],),
        )
    return queue


async def _drift(url: str) -> dict[str, Any]:
    queue = await withdrawal(url, month(7))
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO ledger_findings (key, kind, order_id, queue_id, drift)"
            " SELECT t.id::text, 'status_mismatch', %s, %s, 'funds COMMITTED but ledger frozen'"
            " FROM order_tasks t WHERE t.queue_id = %s AND t.status = 'SUCCEEDED'",
            (queue["order_id"], queue["id"], queue["id"]),
        )
    return queue


async def _untold(url: str) -> dict[str, Any]:
    queue = await withdrawal(url, month(8))
    with psycopg.connect(url) as conn:  # cascade-core has not heard the outcome yet
        conn.execute(
            "UPDATE order_queues SET core_notified_at = NULL WHERE id = %s", (queue["id"],)
        )
    return queue


KEPT = {
    "not final": _not_final,
    "manual check open": _manual_check,
    "dead letter not replayed": _dead_letter,
    "reconciliation drift open": _drift,
    "outcome not yet told to cascade-core": _untold,
}


async def test_a_month_with_a_withdrawal_that_must_stay_waits_and_says_why(
    url: str, tmp_path: Path
) -> None:
    kept = {reason: await make(url) for reason, make in KEPT.items()}
    # a final, clean withdrawal beside each: its month waits for its neighbour
    for queue in kept.values():
        await withdrawal(url, queue["created_at"] + timedelta(hours=1))
    clean = await withdrawal(url, month(9))

    report = archiver(url, tmp_path).run()

    assert report is not None
    waiting = {
        name: [(b.reason, b.withdrawals, b.examples) for b in found]
        for name, found in report.blocked.items()
    }
    expected = {
        partition(n): [(reason, 1, [q["order_id"]])]
        for n, (reason, q) in enumerate(kept.items(), start=4)
    }
    # a task waiting for a person keeps its withdrawal live too
    expected[partition(5)].append(("not final", 1, [kept["manual check open"]["order_id"]]))
    assert waiting == expected
    for queue in kept.values():
        assert timeline_rows(url, queue["id"])  # still hot, every row
    assert partition(9) in report.archived
    assert timeline_rows(url, clean["id"]) == []

    # Closed, the dead letter no longer keeps its month: the next run takes it.
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE dead_letters SET replayed_at = now(), replayed_by = 'ana'")
    again = archiver(url, tmp_path).run()
    assert again is not None and again.archived == [partition(6)]


async def test_a_run_that_died_after_the_detach_finishes_the_archive(
    url: str, tmp_path: Path
) -> None:
    queue = await withdrawal(url, month(9))
    rows = timeline_rows(url, queue["id"])
    with psycopg.connect(url) as conn:  # what a run that died after its first step left
        conn.execute(
            "INSERT INTO event_archives (partition, lower, upper)"
            " SELECT name, lower, upper FROM v_event_partitions WHERE name = %s",
            (partition(9),),
        )
        conn.execute(f"ALTER TABLE order_task_events DETACH PARTITION {partition(9)}")
    # detached, not yet archived: `archive show` reads the detached table
    assert archived_rows(url, tmp_path, queue["id"])["events"] == rows
    partial = tmp_path / TABLE_DIR / f"{partition(9)}.partial"
    partial.mkdir(parents=True)
    (partial / "events.csv.gz").write_bytes(b"half a file")

    report = archiver(url, tmp_path).run()

    assert report is not None and partition(9) in report.archived
    assert not partial.exists()
    assert archived_rows(url, tmp_path, queue["id"])["events"] == rows


async def test_a_corrupted_archive_is_refused(url: str, tmp_path: Path) -> None:
    queue = await withdrawal(url, month(10))
    assert archiver(url, tmp_path).run() is not None
    events = tmp_path / TABLE_DIR / partition(10) / "events.csv.gz"
    raw = events.read_bytes()
    events.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # one bit pattern changed
    with pytest.raises(files.Corrupt, match="sha256"):
        files.verify(events.parent)
    with pytest.raises((OSError, EOFError, zlib.error)):  # each block's own CRC and length
        show(Settings(database_url=url, archive_dir=tmp_path), queue["id"])


def due(n: int) -> datetime:
    """The moment the n-th month falls due: RETENTION after its end."""
    return month(n + 1).replace(day=1, hour=0, minute=0, second=0, microsecond=0) + RETENTION


async def test_an_archive_written_ahead_is_what_retention_keeps(url: str, tmp_path: Path) -> None:
    queues = [await withdrawal(url, month(2) + timedelta(hours=i)) for i in range(3)]
    before = {q["id"]: timeline_rows(url, q["id"]) for q in queues}

    ahead = archiver(url, tmp_path, at=due(2) - timedelta(days=3)).run()

    assert ahead is not None and partition(2) in ahead.prepared
    assert partition(2) not in ahead.archived and all(before[q] for q in before)  # still hot
    written = tmp_path / TABLE_DIR / f"{partition(2)}.prepared"
    sha = files.sha256_of(written / "manifest.json")

    report = archiver(url, tmp_path, at=due(2) + timedelta(hours=1)).run()

    assert report is not None and partition(2) in report.archived
    final = tmp_path / TABLE_DIR / partition(2)
    assert not written.exists() and files.sha256_of(final / "manifest.json") == sha  # kept
    for queue in queues:
        assert archived_rows(url, tmp_path, queue["id"])["events"] == before[queue["id"]]


async def test_an_archive_written_ahead_runs_at_a_lower_priority(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write-ahead's thread is niced (live traffic gets the cores first); the due
    run's own work, which holds the detach's locks, and the calling thread are not."""
    await withdrawal(url, month(4))
    seen: list[int] = []  # the nice value month 4's files were written at, each time
    real_write = files.write

    def write(conn: Any, table: str, *args: Any, **kwargs: Any) -> Any:
        if table == partition(4):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real_write(conn, table, *args, **kwargs)

    monkeypatch.setattr(files, "write", write)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    archiver(url, tmp_path, at=due(4) - timedelta(days=1)).run()  # written ahead
    (tmp_path / TABLE_DIR / f"{partition(4)}.prepared").rename(tmp_path / "aside")
    archiver(url, tmp_path, at=due(4) + timedelta(hours=1)).run()  # due: written now

    assert seen == [min(mine + AHEAD_NICENESS, 19), mine]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


async def test_an_archive_written_ahead_that_misses_a_row_is_written_again(
    url: str, tmp_path: Path
) -> None:
    queue = await withdrawal(url, month(3))
    assert archiver(url, tmp_path, at=due(3) - timedelta(days=1)).run() is not None
    written = files.verify(tmp_path / TABLE_DIR / f"{partition(3)}.prepared")
    with psycopg.connect(url) as conn:  # a late row after the archive was written
        conn.execute(
            "INSERT INTO order_task_events (queue_id, event_type, actor, queue_created_at)"
            " VALUES (%s, 'late_webhook', 'provider', %s)",
            (queue["id"], queue["created_at"]),
        )
    rows = timeline_rows(url, queue["id"])

    report = archiver(url, tmp_path, at=due(3) + timedelta(hours=1)).run()

    assert report is not None and partition(3) in report.archived
    manifest = files.verify(tmp_path / TABLE_DIR / partition(3))
    assert manifest.files["events"].rows == written.files["events"].rows + 1
    assert archived_rows(url, tmp_path, queue["id"])["events"] == rows


async def test_retention_gives_way_to_a_writer_and_keeps_writers_waiting_briefly(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transition holding the audit trail (its row written, not yet committed) is
    never aborted for retention: the detach gives up, and writers queued behind its
    lock request wait at most LOCK_TIMEOUT each time."""
    monkeypatch.setattr(archive_detach, "ATTEMPTS", 2)
    monkeypatch.setattr(archive_detach, "PAUSE_S", 0.1)
    queue = await withdrawal(url, month(4))
    current = await withdrawal(url, datetime.now(UTC), "ACTIVE")
    insert = (
        "INSERT INTO order_task_events (queue_id, event_type, actor, queue_created_at)"
        " VALUES (%s, 'heartbeat', 'worker', %s)"
    )
    waited: list[float] = []

    def second_writer() -> None:  # arrives while the detach waits for its lock
        with psycopg.connect(url, autocommit=True) as conn:
            started = time.monotonic()
            conn.execute(insert, (current["id"], current["created_at"]))
            waited.append(time.monotonic() - started)

    with psycopg.connect(url) as transition:
        transition.execute(
            "UPDATE order_queues SET updated_at = now() WHERE id = %s", (current["id"],)
        )
        transition.execute(insert, (current["id"], current["created_at"]))
        writer = threading.Timer(0.1, second_writer)
        writer.start()
        report = archiver(url, tmp_path, at=due(4) + timedelta(hours=1)).run()
        writer.join()
        transition.commit()  # not aborted: no deadlock, no cancel

    assert report is not None and partition(4) in report.busy and not report.archived
    assert waited and waited[0] < 1.0, waited
    assert timeline_rows(url, queue["id"])  # nothing changed
    again = archiver(url, tmp_path, at=due(4) + timedelta(hours=1)).run()
    assert again is not None and partition(4) in again.archived
