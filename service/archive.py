"""Retention with an archive (issue 23; docs/ops.md, "Retention and the archive").

A month of the audit trail leaves the hot tables whole, once RETENTION_DAYS have
passed since its end and every withdrawal submitted in it may leave
(service/history.py): the partition is detached, written to ARCHIVE_DIR as compressed
CSV with a manifest (service/archive_files.py), checked, and dropped. A month that
must wait is reported, with why and for which withdrawals, and judged again next run.

Steps, each one safe to repeat after a crash: `event_archives` (migration 0016)
records a partition once it is detached ('detached': its table still exists, the
files may be missing or partial) and once the verified files replaced it
('archived'). A run first finishes what an earlier one left detached.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from engine.contracts import ShellJob
from engine.steps import Runtime
from service import archive_files as files
from service.history import Blocker, Partition, add_months, blockers, partitions
from service.settings import Settings

log = logging.getLogger("payment.archive")

ARCHIVE_LOCK = 7_303_023  # one archiver at a time, in any process (its session's lock)
TABLE_DIR = "order_task_events"


@dataclass
class Report:
    archived: list[str] = field(default_factory=list)
    blocked: dict[str, list[Blocker]] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)  # the detach waited too long for its locks


class Archiver:
    def __init__(
        self,
        conninfo: str,
        directory: Path,
        retention: timedelta,
        block: int = 2000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._conninfo = conninfo
        self._directory = directory / TABLE_DIR
        self._retention = retention
        self._block = block
        self._clock = clock  # tests move it on, rather than waiting months

    def run(self) -> Report | None:
        """Archive every month due; None when another archiver is running. Its own
        connection holds the lock, closed at the end however the run ends."""
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ARCHIVE_LOCK,)).fetchone()
            if not (row and row[0]):
                return None
            self._directory.mkdir(parents=True, exist_ok=True)
            report = Report()
            for name in _left_detached(conn):
                self._write_and_drop(conn, name, report)
            for partition in self.due(conn):
                self._archive(conn, partition, report)
            return report

    def due(self, conn: psycopg.Connection[Any]) -> list[Partition]:
        """The partitions whose every withdrawal was submitted more than the retention
        period ago, oldest first (never the default one)."""
        cutoff = self._clock() - self._retention
        return [p for p in partitions(conn) if p.upper is not None and p.upper <= cutoff]

    def _archive(self, conn: psycopg.Connection[Any], partition: Partition, report: Report) -> None:
        found = blockers(conn, partition)
        if not found:
            try:
                found = _detach(conn, partition)
            except psycopg.errors.LockNotAvailable:
                log.warning("archive: %s: the audit trail was busy; next run", partition.name)
                report.busy.append(partition.name)
                return
        if found:
            report.blocked[partition.name] = found
            for b in found:
                log.warning(
                    "archive: %s waits: %d withdrawal(s) with %s (e.g. %s)",
                    partition.name,
                    b.withdrawals,
                    b.reason,
                    ", ".join(b.examples),
                )
            return
        self._write_and_drop(conn, partition.name, report)

    def _write_and_drop(self, conn: psycopg.Connection[Any], name: str, report: Report) -> None:
        """Write the detached partition's archive unless a verified one is there (a run
        that died after the rename), then drop the table with the catalog's record."""
        final = self._directory / name
        lower, upper, events = _detached(conn, name)
        try:
            manifest = _verified(final, events)
            sha = files.sha256_of(final / "manifest.json")
        except FileNotFoundError:
            sha, manifest = self._write(conn, name, lower, upper, events, final)
        except files.Corrupt as exc:  # the table is still there: the truth to write again
            aside = final.with_name(f"{name}.corrupt-{self._clock():%Y%m%dT%H%M%S}")
            log.error("archive: %s (kept as %s); written again", exc, aside)
            final.rename(aside)
            sha, manifest = self._write(conn, name, lower, upper, events, final)
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            conn.execute(_ARCHIVED, (str(final), events, manifest.withdrawals, sha, name))
        log.info(
            "archive: %s: %d events, %d withdrawals, in %s",
            name,
            events,
            manifest.withdrawals,
            final,
        )
        report.archived.append(name)

    def _write(
        self,
        conn: psycopg.Connection[Any],
        name: str,
        lower: datetime | None,
        upper: datetime,
        events: int,
        final: Path,
    ) -> tuple[str, files.Manifest]:
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # a run that died while writing it
        partial.mkdir()
        conn.execute("SET timezone = 'UTC'")  # the files read the same wherever they are read
        withdrawals, sums = files.write(conn, name, partial, self._block)
        if sums["events"].rows != events:
            raise files.Corrupt(f"{name}: wrote {sums['events'].rows} of {events} rows")
        manifest = files.Manifest(
            name,
            lower.isoformat() if lower else None,
            upper.isoformat(),
            withdrawals,
            sums,
            files.columns(conn, name),
        )
        sha = files.seal(partial, manifest, final)
        files.verify(final, sha)  # read back from the disk, as a reader will
        return sha, manifest


# Detaching takes ACCESS EXCLUSIVE on the audit trail (not CONCURRENTLY: PostgreSQL
# allows that only without a default partition): every writer queues behind it, so it
# waits at most this long, then the next run tries again.
DETACH_LOCK_TIMEOUT = "2s"
# First stop what could still make a final withdrawal stay: a dead letter (its writer
# journals, so it would wait for the detach, then commit unseen) and a reconciliation
# finding. SHARE waits for those in flight, and holds off new ones for the moment the
# transaction lasts. Then the blockers are asked again, in the same snapshot.
_STOP_BLOCKERS = "LOCK TABLE dead_letters, ledger_findings IN SHARE MODE"
_RECORD = "INSERT INTO event_archives (partition, lower, upper) VALUES (%s, %s, %s)"
_ARCHIVED = """
UPDATE event_archives SET state = 'archived', path = %s, events = %s, withdrawals = %s,
       manifest_sha256 = %s, archived_at = now()
WHERE partition = %s
"""


def _detach(conn: psycopg.Connection[Any], partition: Partition) -> list[Blocker]:
    """Detach the partition and record it, unless something keeps it now: then nothing
    changed, and what keeps it is returned."""
    detach = sql.SQL("ALTER TABLE order_task_events DETACH PARTITION {}")
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
            conn.execute(_STOP_BLOCKERS)
            conn.execute(detach.format(sql.Identifier(partition.name)))
            if found := blockers(conn, partition):
                raise _KeptBack(found)  # rolls the detach back
            conn.execute(_RECORD, (partition.name, partition.lower, partition.upper))
    except _KeptBack as kept:
        return kept.found
    return []


class _KeptBack(Exception):
    def __init__(self, found: list[Blocker]) -> None:
        super().__init__(found)
        self.found = found


def _verified(directory: Path, events: int) -> files.Manifest:
    manifest = files.verify(directory)
    if manifest.files["events"].rows != events:
        raise files.Corrupt(f"{directory}: {manifest.files['events'].rows} rows, table {events}")
    return manifest


def _left_detached(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute("SELECT partition FROM event_archives WHERE state = 'detached'")
    return [str(r[0]) for r in rows.fetchall()]


def _detached(conn: psycopg.Connection[Any], name: str) -> tuple[datetime | None, datetime, int]:
    row = conn.execute(
        "SELECT lower, upper FROM event_archives WHERE partition = %s", (name,)
    ).fetchone()
    assert row is not None
    table = sql.Identifier(name)
    count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    assert count is not None
    return row[0], row[1], int(count[0])


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
