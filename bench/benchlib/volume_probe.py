"""What one round of bench/volume.py's steady load cost its database, and what its
backends waited on: the figures that tell why the full database's tail differs from
the empty one's.

- The server's counters (`Counters`): reads past shared buffers, rows read by
  sequential scans, WAL written.
- Each statement's calls, mean and longest time, from pg_stat_statements where the
  server preloads it (reset for this database before the round; matched between the
  two databases by its normalised text, since query ids name relation oids).
- The backends' wait events every 50 ms (benchlib/stalls.py's sampler), and the
  checkpoints, buffer writes and the machine's disk writes of the round: a round
  whose p95 jumps can be put beside a checkpoint, a lock or a statement that was
  slow only then.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psutil

from benchlib import sql
from benchlib.cpu_groups import CpuSnapshot, describe
from benchlib.measure import STATS_SETTLE_S
from benchlib.stalls import StallSampler, buffers

# What the load cost the database, from the server's statistics (a backend flushes its
# counters within about STATS_SETTLE_S): reads from outside shared buffers, rows read by
# sequential scans per table (a partition counts as its table), and WAL written, which
# PostgreSQL counts for the whole server only (others' databases included).
COUNTERS = """
SELECT pg_current_wal_lsn()::text,
       (SELECT blks_read FROM pg_stat_database WHERE datname = current_database()),
       (SELECT coalesce(jsonb_object_agg(relname, seq_tup_read), '{}')
        FROM pg_stat_user_tables WHERE seq_tup_read > 0)
"""

# This database's statements; the bench's own (the samplers, these) left out.
STATEMENTS = """
SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time, max_exec_time,
       jit_generation_time + jit_inlining_time + jit_optimization_time + jit_emission_time
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query !~ 'pg_stat_|pg_prewarm'
"""
RESET = """
SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database
                                    WHERE datname = current_database()), 0)
"""
CHECKPOINTS, BACKEND_WRITES = 5, 0  # positions in stalls.buffers()'s tuple


@dataclass
class Counters:
    lsn: str
    blks_read: int
    seq_rows: dict[str, int]

    @classmethod
    def take(cls, url: str) -> Counters:
        lsn, blks, seq = sql(url, COUNTERS)[0]
        rows: dict[str, int] = {}
        for name, n in seq.items():
            table = "order_task_events" if name.startswith("order_task_events_") else name
            rows[table] = rows.get(table, 0) + int(n)
        return cls(str(lsn), int(blks or 0), rows)

    def since(self, url: str, before: Counters, out: dict[str, Any], withdrawals: int) -> None:
        """Add what happened between `before` and this snapshot to `out`'s totals."""
        wal = sql(
            url, "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", params=(self.lsn, before.lsn)
        )
        out["wal"] = out.get("wal", 0) + int(wal[0][0])
        out["blks_read"] = out.get("blks_read", 0) + self.blks_read - before.blks_read
        seq = out.setdefault("seq_rows", {})
        for table, n in self.seq_rows.items():
            seq[table] = seq.get(table, 0) + n - before.seq_rows.get(table, 0)
        out["counted"] = out.get("counted", 0) + withdrawals


def statements_available(url: str) -> bool:
    """pg_stat_statements preloaded by the server (its view then made in `url`)."""
    preload = str(sql(url, "SHOW shared_preload_libraries")[0][0])
    if "pg_stat_statements" not in preload:
        return False
    sql(url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return True


class RoundProbe:
    """Started before a round (warm-up included), finished after it; adds to `out`:
    the counters' totals, "statements" {text: [calls, total ms, max ms, JIT compiling
    ms]} and per round "round_statements" ({text: (calls, total ms)}), "waits" (a
    Counter of the backends' samples), and per round "round_io" (checkpoints, backend
    writes, disk MiB written and disk busy s) and "round_cpu" (withdrawals, and CPU ms
    per withdrawal by process group as a line: benchlib/cpu_groups.py)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statements = statements_available(url)
        if self.statements:
            sql(url, RESET)
        self.buffers = buffers(url)
        self.disk = psutil.disk_io_counters()
        self.counters = Counters.take(url)  # the last stack's backends flushed theirs
        self.sampler = StallSampler(url, archiver="(none)")
        self.sampler.start()
        self.started = datetime.now(UTC)
        self.cpu = CpuSnapshot.take(os.getpid())
        self.db = str(sql(url, "SELECT current_database()")[0][0])

    def finish(self, out: dict[str, Any], withdrawals: int, prefix: str) -> None:
        """`prefix`: the measured withdrawals' order ids, for the round's timeline."""
        spent = CpuSnapshot.take(os.getpid()).spent_since(self.cpu)
        out.setdefault("round_cpu", []).append((withdrawals, describe(spent, withdrawals, self.db)))
        self.sampler.halt.set()
        self.sampler.join()
        out.setdefault("timelines", []).append(self.timeline(prefix))
        time.sleep(STATS_SETTLE_S)
        Counters.take(self.url).since(self.url, self.counters, out, withdrawals)
        after, disk = buffers(self.url), psutil.disk_io_counters()
        out.setdefault("round_io", []).append(
            (
                *(after[i] - self.buffers[i] for i in (CHECKPOINTS, BACKEND_WRITES)),
                (disk.write_bytes - self.disk.write_bytes) / 2**20,
                (getattr(disk, "busy_time", 0) - getattr(self.disk, "busy_time", 0)) / 1000,
            )
        )
        out.setdefault("waits", Counter()).update(self.sampler.waits(0, float("inf")))
        if self.statements:
            merged = out.setdefault("statements", {})
            this_round: dict[str, tuple[int, float]] = {}
            out.setdefault("round_statements", []).append(this_round)
            for text, calls, total, longest, jit in sql(self.url, STATEMENTS):
                this_round[text] = (int(calls), float(total))
                have = merged.setdefault(text, [0, 0.0, 0.0, 0.0])
                have[0] += int(calls)
                have[1] += float(total)
                have[2] = max(have[2], float(longest))
                have[3] += float(jit)

    def timeline(self, prefix: str) -> list[str]:
        """A line a second of the measured part: the withdrawals submitted then (count,
        mean and slowest ms to SUCCEEDED), the machine's CPU, the backends busy and
        their commonest waits and statements."""
        rows = sql(self.url, _PER_SECOND, params=(self.started, f"{prefix}-%"))
        lines = []
        for second, n, mean_ms, max_ms in rows:
            inside = self.sampler.between(float(second), float(second) + 1)
            busy = [b for smp in inside for b in smp.backends]
            cpu = sum(smp.cpu_busy for smp in inside) / len(inside) if inside else float("nan")
            waits = Counter(b[2] for b in busy).most_common(3)
            doing = Counter(b[3][:40] for b in busy if b[2] != "Client:ClientRead")
            lines.append(
                f"  {time.strftime('%H:%M:%S', time.gmtime(float(second)))} {n:>3} sent,"
                f" {mean_ms:>6.0f} / {max_ms:>6.0f} ms; cpu {cpu:4.0%};"
                f" {len(busy) / max(len(inside), 1):4.1f} busy: "
                + ", ".join(f"{w} {c}" for w, c in waits)
                + " | "
                + "; ".join(f"{q} x{c}" for q, c in doing.most_common(2))
            )
        return lines


# Each second of a round's measured withdrawals (by submission): how many, mean, slowest.
_PER_SECOND = """
SELECT extract(epoch FROM date_trunc('second', q.created_at)), count(*),
       avg(extract(epoch FROM t.updated_at - q.created_at)) * 1000,
       max(extract(epoch FROM t.updated_at - q.created_at)) * 1000
FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id AND t.status = 'SUCCEEDED'
WHERE q.created_at >= %s AND q.order_id LIKE %s GROUP BY 1 ORDER BY 1
"""  # by created_at's index: a LIKE alone read all of order_queues (5M rows, run 11)


def tell(empty: dict[str, Any], full: dict[str, Any], top: int = 12) -> list[str]:
    """The lines the report prints: each round's checkpoints, the wait events' shares,
    the statements that cost the full database most per withdrawal (then those whose
    longest call was longest), and each database's slowest round second by second."""
    lines = []
    for side, name in ((empty, "empty"), (full, "full")):
        io = "; ".join(
            f"{c} checkpoint(s), {w:,} backend writes, disk {mib:,.0f} MiB written, busy {s:.0f} s"
            for c, w, mib, s in side["round_io"]
        )
        lines.append(f"each round on the {name} database (the whole machine's disk): {io}")
    for side, name in ((empty, "empty"), (full, "full")):
        lines.append(f"CPU ms per withdrawal by process on the {name} database, each round:")
        lines += [f"  round {i + 1} ({n:,}): {cpu}" for i, (n, cpu) in enumerate(side["round_cpu"])]
    for side, name in ((empty, "empty"), (full, "full")):
        waits: Counter[str] = side["waits"]
        seen = sum(waits.values()) or 1
        shares = ", ".join(f"{w} {n / seen:.0%}" for w, n in waits.most_common(6))
        lines.append(f"the backends' samples on the {name} database ({seen:,}): {shares}")
    if "statements" not in full or "statements" not in empty:
        lines.append("statements: no pg_stat_statements on this server (shared_preload_libraries)")
        return lines
    lines.append(
        f"\nstatements by the full database's time per withdrawal (top {top}):"
        f"\n  {'ms/withdrawal full (empty)':>27} {'mean ms full (empty)':>21}"
        f" {'max ms full (empty)':>21} {'JIT ms full':>11}  statement"
    )
    per_e, per_f = empty["counted"] or 1, full["counted"] or 1
    by_total = sorted(full["statements"].items(), key=lambda kv: -kv[1][1])[:top]
    by_longest = sorted(full["statements"].items(), key=lambda kv: -kv[1][2])[: top // 2]
    ranked = by_total + [kv for kv in by_longest if kv not in by_total]
    for text, (calls, total, longest, jit) in ranked:
        e_calls, e_total, e_longest, _ = empty["statements"].get(text, [0, 0.0, 0.0, 0.0])
        e_mean = e_total / e_calls if e_calls else float("nan")
        lines.append(
            f"  {total / per_f:>12.3f} ({e_total / per_e:>8.3f})"
            f" {total / calls:>9.2f} ({e_mean:>7.2f})"
            f" {longest:>9.0f} ({e_longest:>7.0f}) {jit:>11.0f}  {text[:90]}"
        )
    lines += slowest_round_statements(full, top // 2)
    for side, name in ((empty, "empty"), (full, "full")):
        worst = slowest_round(side)
        lines.append(
            f"\nthe {name} database's slowest round ({worst + 1}, p95"
            f" {side['rounds'][worst][4]:.0f} ms), a line a second:"
        )
        lines += side["timelines"][worst]
    return lines


def slowest_round_statements(side: dict[str, Any], top: int) -> list[str]:
    """The statements that cost the full database's slowest round most per withdrawal,
    beside the same statements' cost per withdrawal in its other rounds: whether that
    round's backlog was a statement that cost more then, or the same work queued."""
    rounds = side.get("round_statements", [])
    if len(rounds) < 2:
        return []
    worst = slowest_round(side)
    counted = [n for n, _ in side["round_cpu"]]
    others = [i for i in range(len(rounds)) if i != worst]
    lines = [
        f"\nthe full database's slowest round ({worst + 1}): ms per withdrawal, that round"
        " (the others); mean ms, that round (the others)"
    ]
    ranked = sorted(rounds[worst].items(), key=lambda kv: -kv[1][1])[:top]
    for text, (calls, total) in ranked:
        o_calls = sum(rounds[i].get(text, (0, 0.0))[0] for i in others)
        o_total = sum(rounds[i].get(text, (0, 0.0))[1] for i in others)
        o_counted = sum(counted[i] for i in others) or 1
        o_mean = o_total / o_calls if o_calls else float("nan")
        lines.append(
            f"  {total / max(counted[worst], 1):>8.3f} ({o_total / o_counted:>8.3f})"
            f" {total / max(calls, 1):>8.2f} ({o_mean:>7.2f})  {text[:90]}"
        )
    return lines


def slowest_round(side: dict[str, Any]) -> int:
    """The index of the round with the highest p95 (`rounds`' fifth field)."""
    return max(range(len(side["rounds"])), key=lambda i: side["rounds"][i][4])
