"""The due run takes a month's row count from the archive written ahead, where that
archive proves it (service/archive_settled.py), and counts the table otherwise."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service import archive, archive_detach
from service import archive_files as files
from service.archive import TABLE_DIR
from tests.history_data import timeline_rows, withdrawal
from tests.test_archive import archived_rows, archiver, due, month, partition, url

__all__ = ["url"]  # the fixture, shared with tests/test_archive.py

HOUR = timedelta(hours=1)
LATE_ROW = (
    "INSERT INTO order_task_events (queue_id, event_type, actor, queue_created_at)"
    " VALUES (%s, 'late_webhook', 'provider', %s)"
)


def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The partitions the due run counted row by row."""
    seen: list[str] = []
    real = archive_detach.row_count

    def row_count(conn: Any, name: str) -> int:
        seen.append(name)
        return real(conn, name)

    monkeypatch.setattr(archive, "row_count", row_count)
    return seen


def ahead(url: str, root: Path, n: int, wait_s: float = 0.5) -> files.Manifest:
    assert archiver(url, root, at=due(n) - timedelta(days=1), wait_s=wait_s).run()
    return files.verify(root / TABLE_DIR / f"{partition(n)}.prepared")


async def test_a_month_written_ahead_is_not_counted_again_when_due(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = await withdrawal(url, month(5))
    before = timeline_rows(url, queue["id"])
    written = ahead(url, tmp_path, 5)
    assert written.settled_upto is not None and written.history
    seen = counted(monkeypatch)

    report = archiver(url, tmp_path, at=due(5) + HOUR).run()

    assert report is not None and partition(5) in report.archived and seen == []
    assert archived_rows(url, tmp_path, queue["id"])["events"] == before


async def test_a_transition_open_while_the_archive_is_written_ahead_is_in_it(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its row's id was drawn before the archive was begun: the write-ahead waits for
    it to commit, and the archive holds it."""
    queue = await withdrawal(url, month(6))
    assert archiver(url, tmp_path, at=due(5) + HOUR).run()  # the months before: out of the way
    with psycopg.connect(url) as transition:
        transition.execute(LATE_ROW, (queue["id"], queue["created_at"]))
        writing = threading.Thread(target=ahead, args=(url, tmp_path, 6, 10.0))
        writing.start()
        writing.join(timeout=0.5)
        assert writing.is_alive()  # waiting for the transition
        transition.commit()
    writing.join(timeout=30)
    rows = timeline_rows(url, queue["id"])
    seen = counted(monkeypatch)

    report = archiver(url, tmp_path, at=due(6) + HOUR).run()

    assert report is not None and partition(6) in report.archived and seen == []
    assert archived_rows(url, tmp_path, queue["id"])["events"] == rows
    assert any(r["event_type"] == "late_webhook" for r in rows)


async def test_a_row_after_the_archive_was_written_ahead_makes_the_due_run_count(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = await withdrawal(url, month(7))
    written = ahead(url, tmp_path, 7)
    with psycopg.connect(url) as conn:
        conn.execute(LATE_ROW, (queue["id"], queue["created_at"]))
    rows = timeline_rows(url, queue["id"])
    seen = counted(monkeypatch)

    report = archiver(url, tmp_path, at=due(7) + HOUR).run()

    assert report is not None and partition(7) in report.archived and seen == [partition(7)]
    manifest = files.verify(tmp_path / TABLE_DIR / partition(7))
    assert manifest.files["events"].rows == written.files["events"].rows + 1
    assert manifest.settled_upto is None  # written again, from the detached table
    assert archived_rows(url, tmp_path, queue["id"])["events"] == rows


async def test_an_archive_written_ahead_on_another_history_is_counted(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failover or a restore the rows it holds may not all be in the table."""
    queue = await withdrawal(url, month(8))
    before = timeline_rows(url, queue["id"])
    ahead(url, tmp_path, 8)
    manifest = tmp_path / TABLE_DIR / f"{partition(8)}.prepared" / "manifest.json"
    data = json.loads(manifest.read_bytes())
    manifest.write_text(json.dumps({**data, "history": "1/2"}))  # another timeline
    seen = counted(monkeypatch)

    report = archiver(url, tmp_path, at=due(8) + HOUR).run()

    assert report is not None and partition(8) in report.archived and seen == [partition(8)]
    assert archived_rows(url, tmp_path, queue["id"])["events"] == before
