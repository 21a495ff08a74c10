"""Finished procrastinate jobs leave its table once their record is kept elsewhere
(engine/job_purge.py)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from engine.job_purge import purge_jobs
from tests.history_data import migrated_database


@pytest.fixture
def url() -> Iterator[str]:
    with migrated_database("_purge") as url:
        yield url


_JOB = """
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)
VALUES ('activities', 'activity', '{}', %s) RETURNING id
"""


async def test_finished_jobs_are_purged_once_their_dead_letters_are_recorded(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row
    ) as conn:
        ids = {}
        for status in ("todo", "doing", "succeeded", "cancelled", "aborted", "failed", "lost"):
            row = await (
                await conn.execute(_JOB, ("failed" if status == "lost" else status,))
            ).fetchone()
            assert row is not None
            ids[status] = row["id"]
        await conn.execute(
            "INSERT INTO dead_letters (job_id, task_name, args, attempts, error)"
            " VALUES (%s, 'activity', '{}', 3, 'boom')",
            (ids["failed"],),
        )
        purged = await purge_jobs(conn, batch=2)  # batches smaller than the work
        left = await (
            await conn.execute("SELECT id FROM procrastinate_jobs ORDER BY id")
        ).fetchall()
    assert purged == 4
    # the failed job whose dead letter was never written is the only record of it: kept
    assert [r["id"] for r in left] == [ids["todo"], ids["doing"], ids["lost"]]
