"""bench/volume.py's retention under load: the archiver in a process of its own, a day
before the month is due and then when it is, with the locks and the writers' waits
sampled (benchlib/stalls.py)."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import re
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from benchlib import sql, stalls
from benchlib.volume_load import Load, drain, latencies, p, settle
from sandbox.stack import Stack
from service.archive import Archiver
from service.history import partitions

RETENTION = timedelta(days=90)  # Settings.retention_days's default
SAMPLE_S = 0.05  # pg_locks sampling period


class LockSampler(threading.Thread):
    """Every SAMPLE_S: each lock a backend of the database waits for (PostgreSQL 14+
    says since when), and whether the audit trail's parent is locked ACCESS EXCLUSIVE
    (the detach). A wait shorter than the period may go unseen; one over 1 s cannot."""

    # Each wait with who waits (the archiver's connection is named ARCHIVER) and who
    # holds it up, so that the longest can be told.
    QUERY = r"""
    SELECT l.pid, l.mode, coalesce(l.relation::regclass::text, l.locktype), l.waitstart,
           extract(epoch FROM clock_timestamp() - l.waitstart), l.granted,
           extract(epoch FROM clock_timestamp()),
           coalesce(nullif(a.application_name, ''), 'pid ' || a.pid) || ': '
               || left(regexp_replace(a.query, '\s+', ' ', 'g'), 70),
           CASE WHEN NOT l.granted THEN (
               SELECT string_agg(coalesce(nullif(b.application_name, ''), 'pid ' || b.pid)
                                 || ' (' || b.state || '): '
                                 || left(regexp_replace(b.query, '\s+', ' ', 'g'), 70), '; ')
               FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(l.pid))) END
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE a.datname = current_database() AND l.pid <> pg_backend_pid()
      AND (NOT l.granted OR (l.mode = 'AccessExclusiveLock'
                             AND l.relation = 'order_task_events'::regclass))
    """

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.halt = threading.Event()
        self.waits: dict[tuple[int, Any], tuple[float, float, str]] = {}  # -> (at, s, what)
        self.exclusive: list[float] = []  # sample times the parent was held exclusively
        self.backend_cpu: dict[int, float] = {}  # the archiver's backends: CPU seconds

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.halt.wait(SAMPLE_S):
                rows = conn.execute(self.QUERY).fetchall()
                named = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                for (pid,) in conn.execute(named, (ARCHIVER,)).fetchall():
                    with contextlib.suppress(psutil.Error):
                        times = psutil.Process(pid).cpu_times()
                        self.backend_cpu[pid] = times.user + times.system
                for pid, mode, what, since, waited, granted, now, who, by in rows:
                    if granted:
                        self.exclusive.append(float(now))
                    elif since is not None:
                        seen = self.waits.get((pid, since), (0.0, 0.0, ""))
                        if float(waited) >= seen[1]:
                            text = f"{who} waits for {mode} on {what}, held up by {by}"
                            self.waits[(pid, since)] = (float(now), float(waited), text)

    def worst(self, start: float, end: float) -> tuple[float, str]:
        inside = [(s, w) for at, s, w in self.waits.values() if start <= at <= end]
        return max(inside, default=(0.0, "none seen"))

    def held(self, start: float, end: float) -> float:
        """Seconds the parent was seen held exclusively in [start, end]: each sample that
        saw it counts until the next one (a lone one, one period)."""
        seen = sorted(t for t in self.exclusive if start <= t <= end)
        gaps = [b - a for a, b in itertools.pairwise(seen)]
        return sum(g if g < 3 * SAMPLE_S else SAMPLE_S for g in gaps) + SAMPLE_S * bool(seen)


ARCHIVER = "bench-volume-archiver"
ATTEMPTS = 3  # archiver runs a retention may take; the hourly job would wait an hour


def archive_month(url: str, directory: str, clock: str, go: EventType, out: Queue[Any]) -> None:
    """In a process of its own, as a worker's history job runs: archiver runs, its clock
    at `clock`, until one ends without an error (at most ATTEMPTS, a second apart: the
    job's next hourly run, compressed). Puts a dict: when the first began, when the
    last began and ended, what it archived or left waiting, and each failed run's error
    (with the relations its message names by oid)."""
    named = make_conninfo(url, application_name=ARCHIVER)  # for the lock sampler
    archiver = Archiver(
        named, Path(directory), RETENTION, clock=lambda: datetime.fromisoformat(clock)
    )
    result: dict[str, Any] = {
        "archived": [],
        "waiting": [],
        "errors": [],
        "runs": [],
        "cpu_s": float("nan"),  # the archiving run's, in this process (the files)
    }
    go.wait()
    result["first"] = time.time()
    for _ in range(ATTEMPTS):
        result["started"], cpu = time.time(), time.process_time()
        try:
            report = archiver.run()
        except psycopg.Error as exc:
            result["ended"] = time.time()
            result["errors"].append(_named(url, str(exc)))
            result["runs"].append(f"{result['ended'] - result['started']:.2f} s: failed")
            time.sleep(1)
            continue
        result["ended"], result["cpu_s"] = time.time(), time.process_time() - cpu
        result["runs"].append(f"{result['ended'] - result['started']:.2f} s: {report}")
        if report is None:
            result["waiting"].append("another archiver ran")
        else:
            result["archived"] = report.archived
            result["waiting"] += [
                f"{n}: {', '.join(b.reason for b in bs)}" for n, bs in report.blocked.items()
            ] + [f"{n}: busy" for n in report.busy]
        break
    out.put(result)


def _named(url: str, message: str) -> str:
    """The error's first lines, each `relation <oid>` followed by its name."""
    oids = {int(o) for o in re.findall(r"relation (\d+)", message)}
    names = (
        dict(
            sql(
                url,
                "SELECT oid::int, relname::text FROM pg_class WHERE oid = ANY(%s)",
                params=(list(oids),),
            )
        )
        if oids
        else {}
    )
    text = " ".join(message.strip().splitlines()[:3])
    return re.sub(r"relation (\d+)", lambda m: f"relation {names.get(int(m[1]), m[1])}", text)


def oldest_month(url: str) -> tuple[str, datetime, int]:
    """The oldest month partition still attached, its end and its withdrawals."""
    with psycopg.connect(url) as conn:
        months = [x for x in partitions(conn) if x.upper is not None and x.lower is not None]
        first = months[0]
        row = conn.execute(
            "SELECT count(*) FROM order_queues WHERE created_at >= %s AND created_at < %s",
            (first.lower, first.upper),
        ).fetchone()
    assert first.upper is not None and row is not None
    return first.name, first.upper, int(row[0])


def run_archiver(url: str, directory: Path, clock: str) -> dict[str, Any]:
    """One archiver run (up to ATTEMPTS), in a process of its own, its clock at `clock`."""
    spawn = multiprocessing.get_context("spawn")  # no threads of this process come along
    go = spawn.Event()
    results: Queue[Any] = spawn.Queue()
    child = spawn.Process(target=archive_month, args=(url, str(directory), clock, go, results))
    child.start()
    try:
        go.set()
        while child.is_alive() and results.empty():
            time.sleep(0.1)
        out: dict[str, Any] = results.get(timeout=10)  # a dead child: Empty, the bench ends
        return out
    finally:
        child.join(timeout=60)


def retention(url: str, stack: Stack, prefix: str, args: argparse.Namespace) -> dict[str, Any]:
    """The oldest month's retention while the load runs, as the hourly job does it: a
    run a day before the month is due (it writes the archive ahead), then a run once it
    is due (detach, count, keep that archive, drop). Each run's wall time and the
    writers' p99 during it, against their p99 before."""
    month, upper, withdrawals = oldest_month(url)
    directory = Path(tempfile.mkdtemp(prefix="bench-volume-archive-"))
    ahead_clock = (upper + RETENTION - timedelta(days=1)).isoformat()
    clock = (upper + RETENTION + timedelta(hours=1)).isoformat()  # due; the next month not
    # Sampling from here only: the steady load's figures are taken without it, and the
    # writers' p99 before and during retention both pay its (small) cost.
    sampler = LockSampler(url)
    sampler.start()
    watcher = stalls.StallSampler(url, ARCHIVER)
    watcher.start()
    load = Load(stack.api_url, prefix, args.rate)
    since = datetime.now(UTC)
    loader = threading.Thread(target=load.run)
    loader.start()
    counted = [stalls.buffers(url)]  # the buffer pool's counters at each phase's edges
    try:
        time.sleep(args.before_s)
        counted.append(stalls.buffers(url))
        ahead = run_archiver(url, directory, ahead_clock)
        counted.append(stalls.buffers(url))
        # A day passes before the month is due: the writers catch up with whatever the
        # write-ahead held back, so that the due run is measured on its own.
        caught_up_s = drain(url, f"{prefix}-%", datetime.now(UTC))
        time.sleep(args.after_s)
        counted.append(stalls.buffers(url))
        archive = run_archiver(url, directory, clock)
        counted.append(stalls.buffers(url))
        started, ended = archive["first"], archive["ended"]
        time.sleep(args.after_s)
    finally:
        load.stop.set()
        loader.join()
        sampler.halt.set()
        watcher.halt.set()
    unfinished = settle(url, prefix, len(load.sent) - load.errors, since)
    lat = latencies(url, prefix, since)
    first = min(at for at, _, _ in load.sent) + 2  # the load's first seconds: its own warm-up
    before = [s for at, s in lat if first <= at < ahead["first"]]
    writing = [s for at, s in lat if ahead["first"] <= at <= ahead["ended"]]
    during = [s for at, s in lat if started <= at <= ended]
    events, files_s, size = archived(url, month, directory)
    wait, what = sampler.worst(ahead["first"], ended + 1)
    phases = {
        "before": (first, ahead["first"], counted[0], counted[1]),
        "written ahead": (ahead["first"], ahead["ended"], counted[1], counted[2]),
        "due": (started, ended, counted[3], counted[4]),
    }
    return {
        "stalls": stall_report(url, prefix, watcher, phases),
        "month": month,
        "month_withdrawals": withdrawals,
        "archived": archive["archived"],
        "waiting": archive["waiting"],
        "errors": ahead["errors"] + archive["errors"],
        "runs": ahead["runs"] + archive["runs"],
        "ahead_s": ahead["ended"] - ahead["first"],
        "ahead99": p(writing, 0.99),
        "ahead_n": len(writing),
        "ahead_cpu_s": ahead["cpu_s"],
        "caught_up_s": caught_up_s,
        "retention_s": ended - started,
        "last_run_s": ended - archive["started"],
        "clock": clock,
        "files_s": files_s,
        "events_archived": events,
        "archive_bytes": size,
        "exclusive_s": sampler.held(started, ended),
        "before99": p(before, 0.99),
        "during99": p(during, 0.99),
        "before_n": len(before),
        "during_n": len(during),
        "lock_wait_s": wait,
        "cpu_s": archive["cpu_s"],
        "backend_cpu_s": sum(sampler.backend_cpu.values()),
        "lock_what": what,
        "load_errors": load.errors,
        "unfinished": unfinished,
    }


def stall_report(
    url: str,
    prefix: str,
    watcher: stalls.StallSampler,
    phases: dict[str, tuple[float, float, tuple[int, ...], tuple[int, ...]]],
) -> list[str]:
    """Per phase: the machine's CPU, what the other backends waited on, the buffer
    pool's counters and the slowest withdrawals' steps; the due run as a timeline."""
    lines = []
    for name, (start, end, before, after) in phases.items():
        waits = watcher.waits(start, end)
        total = sum(waits.values()) or 1
        lines += [
            f"{name} ({end - start:.1f} s): machine CPU {watcher.cpu(start, end):.0%} busy;"
            " backends' samples: "
            + ", ".join(f"{w} {n / total:.0%}" for w, n in waits.most_common(6)),
            f"  {stalls.buffer_change(before, after)}",
            *(f"  slow: {s}" for s in stalls.slowest_steps(url, prefix, start, end)),
        ]
    start, end = phases["due"][:2]
    lines.append("the due run, sampled:")
    lines += [f"  {line}" for line in watcher.timeline(start - 0.5, end + 0.5)]
    start, end = phases["written ahead"][:2]
    if worst := stalls.slowest(url, prefix, start, end):
        lines.append(
            f"the slowest withdrawal while the archive was written ahead ({worst[1]:.3f} s):"
        )
        lines += [f"  {ln}" for ln in watcher.timeline(worst[0] - 1, worst[0] + worst[1] + 0.5)]
    return lines


def archived(url: str, month: str, directory: Path) -> tuple[int, float, int]:
    """The month's archived audit rows, seconds from detached to archived (the files),
    and the archive's bytes, which are then removed; (0, nan, 0) when not archived."""
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    shutil.rmtree(directory, ignore_errors=True)
    row = sql(
        url,
        "SELECT events, extract(epoch FROM archived_at - detached_at)"
        " FROM event_archives WHERE partition = %s AND state = 'archived'",
        params=(month,),
    )
    return (int(row[0][0]), float(row[0][1]), size) if row else (0, float("nan"), 0)


def quiet_retention(url: str, month: str, clock: str) -> dict[str, Any]:
    """The month the load's archiver runs could not take, taken with the stack stopped:
    what retention costs with nothing else writing, and the archive's size."""
    directory = Path(tempfile.mkdtemp(prefix="bench-volume-archive-"))
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    results: Queue[Any] = spawn.Queue()
    go.set()
    archive_month(url, str(directory), clock, go, results)
    archive: dict[str, Any] = results.get(timeout=10)
    events, files_s, size = archived(url, month, directory)
    return {
        "quiet_s": archive["ended"] - archive["started"] if archive["archived"] else float("nan"),
        "quiet_runs": archive["runs"],
        "events_archived": events,
        "files_s": files_s,
        "archive_bytes": size,
    }
