"""The workers' hourly `history` job: the audit trail's partitions made ahead, then the
months due archived (service/archive.py; docs/ops.md, "Retention and the archive")."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import psycopg

from engine.contracts import ShellJob
from engine.steps import Runtime
from service import archive_files as files
from service.archive import Archiver, Report
from service.history import add_months
from service.settings import Settings

log = logging.getLogger("payment.archive")

JOB = "history"
# Hourly: a month falls due once a month, and a month that waits may leave as soon as
# what kept it is closed. One worker runs each tick (procrastinate's periodic defers).
CRON = "23 * * * *"


def run_history(settings: Settings) -> Report | None:
    """The `history` job's body: the months ahead, then (with ARCHIVE_DIR) the months
    due. A failure is logged, never retried: the next hour's run does it all again."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            if made := add_months(conn, settings.partitions_ahead):
                log.info("audit trail partitions made: %s", ", ".join(made))
    except psycopg.Error as exc:
        log.warning("audit trail partitions not made (next run): %s", exc)
    if settings.archive_dir is None:
        return None
    retention = timedelta(days=settings.retention_days)
    archiver = Archiver(
        settings.database_url, settings.archive_dir, retention, settings.archive_block
    )
    try:
        return archiver.run()
    except (psycopg.Error, OSError, files.Corrupt) as exc:
        log.error("archive run failed (next run tries again): %s", exc)
        return None


def history_jobs(settings: Settings) -> dict[str, ShellJob]:
    """The periodic `history` job, for build_app's shell jobs. It runs in a thread: a
    month's archive is minutes of compression that must not stall the worker's loop."""

    async def history(runtime: Runtime, **_: object) -> None:
        await asyncio.to_thread(run_history, settings)

    return {JOB: ShellJob("maintenance", history, cron=CRON)}
