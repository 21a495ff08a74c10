"""Retention with an archive (issue 23; docs/ops.md, "Retention and the archive").

A month of the audit trail leaves the hot tables whole, once RETENTION_DAYS have
passed since its end and every withdrawal submitted in it may leave
(service/history.py): the partition is detached (service/archive_detach.py), its
archive, compressed CSV with a manifest (service/archive_files.py), is put in
ARCHIVE_DIR and checked, and the table is dropped. A month that must wait is
reported, with why and for which withdrawals, and judged again next run.

Writing a month's archive reads the whole month: minutes for a big one. So it is
written ahead, while the month is still attached, once it is within PREPARE_AHEAD of
its due date and nothing keeps it (`<month>.prepared`). At the due date retention
then only detaches, knows the detached table's rows (proven by the prepared archive,
service/archive_settled.py, or else counted), and keeps the prepared archive if it
holds exactly that many (the audit trail is append-only: the same count is the same
rows; a final withdrawal's queue and task rows change only with an audit row);
otherwise it writes the archive again from the detached table. Reading and writing
the files runs in a thread at AHEAD_NICENESS.

Steps, each one safe to repeat after a crash: `event_archives` (migration 0016)
records a partition once it is detached ('detached': its table still exists, the
files may be missing or partial) and once the verified files replaced it
('archived'). A run first finishes what an earlier one left detached. A prepared
archive is only a head start: checked before it is used, written again if stale.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from service import archive_files as files
from service.archive_detach import (
    Busy,
    detach,
    detached_range,
    drop_indexes,
    left_detached,
    row_count,
)
from service.archive_settled import WAIT_S, Settled, proven_rows, settle
from service.history import Blocker, Partition, blockers, partitions
from service.low_priority import NICENESS, at_low_priority

log = logging.getLogger("payment.archive")

ARCHIVE_LOCK = 7_303_023  # one archiver at a time, in any process (its session's lock)
TABLE_DIR = "order_task_events"
PREPARE_AHEAD = timedelta(days=7)  # a month's archive is written this long before it is due
# Written ahead, the archive has days to spare: it rests three times as long as it works,
# every 20 ms of work (archive_files.Pacer), so live traffic keeps the cores.
# At 1.0 (half the time busy), 5 million withdrawals' oldest month, written under the
# steady 40/s on 2 cores, pushed the service past its capacity: its backlog's p99 was
# minutes (bench/volume.py). A month is written in 4x its bare time, hours at most.
AHEAD_PACE = 3.0
# ... and its thread runs at a lower CPU priority (service/low_priority.py), so that
# when a block runs the scheduler still gives the service's own threads the cores first.
AHEAD_NICENESS = NICENESS
# At the due date the files are read back (sha256) before the table is dropped: 0.4 s
# of a core for a month of 5 million withdrawals' history, which at full speed took
# the second core from the service (the writers' p99 84 ms against 38 before, the
# whole due run 1.1 s; docs/capacity.md, "Run 12"). Paced, it rests three times as
# long as it hashes: four times the wall time, a quarter of a core.
DUE_VERIFY_PACE = 3.0
# Between the drops of a detached table's indexes (archive_detach.drop_indexes): the
# writers' WAL flushes that the last one's freed files held up catch up.
DROP_REST_S = 0.2
PREPARED = ".prepared"  # the suffix of an archive written ahead


@dataclass
class Report:
    archived: list[str] = field(default_factory=list)
    blocked: dict[str, list[Blocker]] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)  # the detach waited too long for its locks
    prepared: list[str] = field(default_factory=list)  # written ahead of their due date
    # Seconds each step took, as "<partition> <step>": what a slow run spent its time on.
    steps: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str, step: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps[f"{name} {step}"] = round(time.monotonic() - started, 3)


class Archiver:
    def __init__(
        self,
        conninfo: str,
        directory: Path,
        retention: timedelta,
        block: int = 2000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        prepare_ahead: timedelta = PREPARE_AHEAD,
        settle_wait_s: float = WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._conninfo = conninfo
        self._sleep = sleep
        self._directory = directory / TABLE_DIR
        self._retention = retention
        self._block = block
        self._clock = clock  # tests move it on, rather than waiting months
        self._prepare_ahead = prepare_ahead
        self._settle_wait_s = settle_wait_s

    def run(self) -> Report | None:
        """Archive every month due; None when another archiver is running. Its own
        connection holds the lock, closed at the end however the run ends."""
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ARCHIVE_LOCK,)).fetchone()
            if not (row and row[0]):
                return None
            self._directory.mkdir(parents=True, exist_ok=True)
            report = Report()
            for name in left_detached(conn):
                self._write_and_drop(conn, name, report)
            for partition in self.due(conn):
                self._archive(conn, partition, report)
            for partition in self.due(conn, ahead=self._prepare_ahead):
                self._prepare(conn, partition, report)
            return report

    def due(
        self, conn: psycopg.Connection[Any], ahead: timedelta = timedelta(0)
    ) -> list[Partition]:
        """The partitions whose every withdrawal was submitted more than the retention
        period ago (`ahead`: that will have been, `ahead` from now), oldest first
        (never the default one)."""
        cutoff = self._clock() + ahead - self._retention
        return [p for p in partitions(conn) if p.upper is not None and p.upper <= cutoff]

    def _archive(self, conn: psycopg.Connection[Any], partition: Partition, report: Report) -> None:
        try:
            with report.timed(partition.name, "detach"):
                found = detach(conn, partition)
        except Busy:
            log.warning("archive: %s: the audit trail was busy; next run", partition.name)
            report.busy.append(partition.name)
            return
        if found:
            report.blocked[partition.name] = found
            _log_blockers(partition.name, found)
            return
        self._write_and_drop(conn, partition.name, report)

    def _prepare(self, conn: psycopg.Connection[Any], partition: Partition, report: Report) -> None:
        """Write the archive of a month soon due, from the attached partition, unless a
        verified one is there already or a withdrawal keeps the month (then at its due
        date the blockers are reported)."""
        ahead = self._directory / (partition.name + PREPARED)
        with contextlib.suppress(FileNotFoundError, files.Corrupt):
            files.verify(ahead)
            return
        if blockers(conn, partition):
            return
        shutil.rmtree(ahead, ignore_errors=True)  # stale or corrupt: written again
        with report.timed(partition.name, "written ahead"):
            settled = settle(conn, self._settle_wait_s)  # the due run need not count
            at_low_priority(
                self._write,
                conn,
                partition.name,
                partition.lower,
                partition.upper,
                None,
                ahead,
                AHEAD_PACE,
                settled,
            )
        log.info("archive: %s written ahead of its due date, in %s", partition.name, ahead)
        report.prepared.append(partition.name)

    def _write_and_drop(self, conn: psycopg.Connection[Any], name: str, report: Report) -> None:
        """Put the detached partition's archive in place, unless a verified one is there
        (a run that died after the rename): the one written ahead if it holds every row,
        else one written now. Then drop the table with the catalog's record."""
        final = self._directory / name
        lower, upper = detached_range(conn, name)
        with report.timed(name, "count"):
            events = proven_rows(conn, name, (final, final.with_name(name + PREPARED)))
            if events is None:
                events = row_count(conn, name)
        with report.timed(name, "files"):
            try:
                manifest = at_low_priority(_verified, final, events, DUE_VERIFY_PACE)
                sha = files.sha256_of(final / "manifest.json")
            except FileNotFoundError:
                sha, manifest = self._put_in_place(conn, name, lower, upper, events, final)
            except files.Corrupt as exc:  # the table is still there: the truth to write again
                aside = final.with_name(f"{name}.corrupt-{self._clock():%Y%m%dT%H%M%S}")
                log.error("archive: %s (kept as %s); written again", exc, aside)
                final.rename(aside)
                sha, manifest = self._write(conn, name, lower, upper, events, final)
        with report.timed(name, "drop"):
            drop_indexes(conn, name, lambda: self._sleep(DROP_REST_S))
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                conn.execute(_ARCHIVED, (str(final), events, manifest.withdrawals, sha, name))
        log.info(
            "archive: %s: %d events, %d withdrawals, in %s (%s)",
            name,
            events,
            manifest.withdrawals,
            final,
            ", ".join(f"{k} {v} s" for k, v in report.steps.items() if k.startswith(f"{name} ")),
        )
        report.archived.append(name)

    def _put_in_place(
        self,
        conn: psycopg.Connection[Any],
        name: str,
        lower: datetime | None,
        upper: datetime,
        events: int,
        final: Path,
    ) -> tuple[str, files.Manifest]:
        """The archive written ahead, moved to its name, if it holds exactly `events`
        rows; else written now from the detached table."""
        ahead = final.with_name(name + PREPARED)
        try:
            manifest = at_low_priority(_verified, ahead, events, DUE_VERIFY_PACE)
        except (FileNotFoundError, files.Corrupt) as exc:
            if ahead.exists():
                log.warning("archive: %s: the archive written ahead is not used: %s", name, exc)
                shutil.rmtree(ahead)
            return self._write(conn, name, lower, upper, events, final)
        ahead.rename(final)
        files.sync_dir(final.parent)
        return files.sha256_of(final / "manifest.json"), manifest

    def _write(
        self,
        conn: psycopg.Connection[Any],
        name: str,
        lower: datetime | None,
        upper: datetime | None,
        events: int | None,
        final: Path,
        pace: float = 0.0,
        settled: Settled | None = None,
    ) -> tuple[str, files.Manifest]:
        """Write the archive of partition `name` to `final` (through a `.partial`
        directory and one rename); `events`: the rows it must hold (None: as read);
        `pace`: archive_files.write's; `settled`: only the rows it proves settled, and
        it recorded in the manifest (service/archive_settled.py)."""
        assert upper is not None  # the default partition is never archived
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # a run that died while writing it
        partial.mkdir()
        conn.execute("SET timezone = 'UTC'")  # the files read the same wherever they are read
        upto = settled.upto if settled else None
        withdrawals, sums = files.write(conn, name, partial, self._block, pace, upto_id=upto)
        if events is not None and sums["events"].rows != events:
            raise files.Corrupt(f"{name}: wrote {sums['events'].rows} of {events} rows")
        manifest = files.Manifest(
            name,
            lower.isoformat() if lower else None,
            upper.isoformat(),
            withdrawals,
            sums,
            files.columns(conn, name),
            settled_upto=upto,
            history=settled.history if settled else None,
        )
        sha = files.seal(partial, manifest, final)
        files.verify(final, sha)  # read back from the disk, as a reader will
        return sha, manifest


_ARCHIVED = """
UPDATE event_archives SET state = 'archived', path = %s, events = %s, withdrawals = %s,
       manifest_sha256 = %s, archived_at = now()
WHERE partition = %s
"""


def _log_blockers(name: str, found: list[Blocker]) -> None:
    for b in found:
        log.warning(
            "archive: %s waits: %d withdrawal(s) with %s (e.g. %s)",
            name,
            b.withdrawals,
            b.reason,
            ", ".join(b.examples),
        )


def _verified(directory: Path, events: int, pace: float) -> files.Manifest:
    manifest = files.verify(directory, pace=pace)
    if manifest.files["events"].rows != events:
        raise files.Corrupt(f"{directory}: {manifest.files['events'].rows} rows, table {events}")
    return manifest
