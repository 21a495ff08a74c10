"""Counters read from outside the processes measured: the server's commit counter,
the processes' CPU and memory, procrastinate's job sequence."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil
import psycopg

STATS_SETTLE_S = 11.0  # an idle backend flushes its statistics within about 10 s


def commits(url: str, database: str) -> int:
    """Transactions committed in `database`, as the server counts them."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


def job_sequence(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT last_value FROM procrastinate_jobs_id_seq").fetchone()
    return int(row[0]) if row else 0


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


# The server's own processes that work for every database: WAL and checkpoints.
_SHARED = ("walwriter", "checkpointer", "background writer", "autovacuum")


def server_cpu_s(database: str, shared: bool = True) -> float:
    """CPU of the PostgreSQL backends serving `database`, plus (`shared`) the server's
    shared writers (they write for every database, the sandbox's ledger's and other
    people's too: an upper bound). Backends that exited meanwhile are not counted
    (pools keep theirs)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        title = " ".join(proc.info["cmdline"] or [])
        if not title.startswith("postgres:"):
            continue
        if f" {database} " in title or (shared and any(name in title for name in _SHARED)):
            times = proc.info["cpu_times"]
            total += times.user + times.system
    return total


def shared_cpu_s() -> float:
    """CPU of the server's WAL, checkpoint and vacuum processes (for every database)."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith("postgres:") and any(name in title for name in _SHARED):
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


def rss_mb(pids: list[int]) -> float:
    return float(sum(psutil.Process(pid).memory_info().rss for pid in pids)) / 2**20


@dataclass
class Snapshot:
    at: float
    commits: int
    jobs: int
    api_cpu: float
    worker_cpu: float
    server_cpu: float  # the database's backends only
    shared_cpu: float  # the server's WAL, checkpoint and vacuum processes, anyone's

    @classmethod
    def take(cls, url: str, database: str, api: list[int], workers: list[int]) -> Snapshot:
        return cls(
            time.monotonic(),
            commits(url, database),
            job_sequence(url),
            cpu_s(api),
            cpu_s(workers),
            server_cpu_s(database, shared=False),
            shared_cpu_s(),
        )


def idle_commits_per_s(url: str, database: str, seconds: float) -> float:
    """The server's own count over `seconds` with nothing to do (after a stats flush)."""
    time.sleep(STATS_SETTLE_S)
    before, started = commits(url, database), time.monotonic()
    time.sleep(seconds)
    time.sleep(STATS_SETTLE_S)  # let every backend flush what it did in the window
    after = commits(url, database)
    # the settle wait after the window is idle too: count the whole stretch
    return (after - before) / (time.monotonic() - started)
