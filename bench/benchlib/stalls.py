"""What the writers wait on while retention runs (bench/volume.py): a sampler of the
database's backends and of the machine's CPU, and the slowest withdrawals' steps.

Every SAMPLE_S the sampler records, for each backend of the database that is not
idle, its name, its wait event (none: on the CPU) and what it runs; and the machine's
CPU busy share since the last sample. A window is then told as a timeline (the
archiver's statement, the CPU, the other backends' waits) and as counts of wait
events, so that a slow 1% of the writers can be put beside what ran when it was slow.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psutil
import psycopg

from benchlib import sql

SAMPLE_S = 0.05

_ACTIVITY = r"""
SELECT coalesce(nullif(application_name, ''), backend_type), state,
       coalesce(wait_event_type || ':' || wait_event, 'CPU'),
       left(regexp_replace(coalesce(query, ''), '\s+', ' ', 'g'), 60)
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND state IS DISTINCT FROM 'idle' AND state IS DISTINCT FROM 'idle in transaction'
"""
# Counters of the whole server that tell a buffer pool under pressure: buffers the
# backends had to write themselves (no free one), and blocks read rather than found.
_BUFFERS = """
SELECT buffers_backend, buffers_backend_fsync, buffers_alloc, buffers_clean,
       buffers_checkpoint, checkpoints_timed + checkpoints_req,
       (SELECT blks_read FROM pg_stat_database WHERE datname = current_database()),
       (SELECT blks_hit FROM pg_stat_database WHERE datname = current_database())
FROM pg_stat_bgwriter
"""
BUFFER_FIELDS = (
    "backend writes",
    "backend fsyncs",
    "buffers allocated",
    "bgwriter writes",
    "checkpoint writes",
    "checkpoints",
    "blocks read",
    "blocks hit",
)


@dataclass
class Sample:
    at: float
    cpu_busy: float  # the machine's, since the previous sample (0..1)
    backends: list[tuple[str, str, str, str]]  # (name, state, wait, query)


class StallSampler(threading.Thread):
    def __init__(self, url: str, archiver: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.archiver = archiver  # the archiver's application_name
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        psutil.cpu_percent()  # the first call starts the count
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.halt.wait(SAMPLE_S):
                rows = conn.execute(_ACTIVITY).fetchall()
                busy = psutil.cpu_percent() / 100
                self.samples.append(Sample(time.time(), busy, [tuple(r) for r in rows]))

    def waits(self, start: float, end: float) -> Counter[str]:
        """Wait events of the backends other than the archiver, summed over the samples
        in [start, end] (CPU: running)."""
        seen: Counter[str] = Counter()
        for s in self.between(start, end):
            seen.update(w for name, _, w, _ in s.backends if name != self.archiver)
        return seen

    def cpu(self, start: float, end: float) -> float:
        inside = [s.cpu_busy for s in self.between(start, end)]
        return sum(inside) / len(inside) if inside else float("nan")

    def timeline(self, start: float, end: float, step: float = 0.1) -> list[str]:
        """A line a `step`: seconds from start, CPU busy, the archiver's wait and
        statement, the other backends' waits (busiest first)."""
        lines = []
        at = start
        while at < end:
            inside = self.between(at, at + step)
            mine = [b for s in inside for b in s.backends if b[0] == self.archiver]
            doing = f"{mine[-1][2]} {_short(mine[-1][3])}" if mine else "-"
            others = Counter(w for s in inside for n, _, w, _ in s.backends if n != self.archiver)
            busy = sum(s.cpu_busy for s in inside) / len(inside) if inside else float("nan")
            top = ", ".join(f"{w} {n}" for w, n in others.most_common(4))
            lines.append(f"+{at - start:5.1f} s cpu {busy:4.0%} archiver: {doing:<44} | {top}")
            at += step
        return lines

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]


def _short(query: str) -> str:
    return re.sub(r"\s+", " ", query)[:36]


def buffers(url: str) -> tuple[int, ...]:
    return tuple(int(v) for v in sql(url, _BUFFERS)[0])


def buffer_change(before: tuple[int, ...], after: tuple[int, ...]) -> str:
    return ", ".join(f"{n} {b - a:,}" for n, a, b in zip(BUFFER_FIELDS, before, after, strict=True))


def slowest_steps(url: str, prefix: str, start: float, end: float, count: int = 3) -> list[str]:
    """The `count` slowest withdrawals submitted in [start, end] (epoch seconds), each
    with the milliseconds from its submission to each of its audit rows."""
    rows: list[tuple[Any, ...]] = sql(
        url,
        "SELECT q.id, q.order_id, q.created_at, extract(epoch FROM t.updated_at - q.created_at)"
        " FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id AND t.status = 'SUCCEEDED'"
        " WHERE q.created_at >= to_timestamp(%s) AND q.created_at <= to_timestamp(%s)"
        " AND q.order_id LIKE %s ORDER BY 4 DESC LIMIT %s",
        params=(start, end, f"{prefix}-%", count),
    )
    out = []
    for queue_id, order_id, created, took in rows:
        steps = sql(
            url,
            "SELECT event_type, occurred_at FROM order_task_events WHERE queue_id = %s ORDER BY id",
            params=(queue_id,),
        )
        told = " ".join(f"{e}@{_ms(at, created)}" for e, at in steps)
        out.append(f"{order_id} {float(took) * 1000:.0f} ms: {told}")
    return out


def _ms(at: datetime, since: datetime) -> str:
    return f"{(at - since).total_seconds() * 1000:.0f}"


def slowest(url: str, prefix: str, start: float, end: float) -> tuple[float, float] | None:
    """The slowest withdrawal submitted in [start, end]: (submitted at, seconds taken)."""
    rows = sql(
        url,
        "SELECT extract(epoch FROM q.created_at), extract(epoch FROM t.updated_at - q.created_at)"
        " FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id AND t.status = 'SUCCEEDED'"
        " WHERE q.created_at >= to_timestamp(%s) AND q.created_at <= to_timestamp(%s)"
        " AND q.order_id LIKE %s ORDER BY 2 DESC LIMIT 1",
        params=(start, end, f"{prefix}-%"),
    )
    return (float(rows[0][0]), float(rows[0][1])) if rows else None
