"""Volume: the service on a database holding months of history, against the same on an
empty one (issue 23).

1. Fills a database with `--withdrawals` closed withdrawals (default 5,000,000) submitted
   over the last `--months` months and this one, with every row a closed withdrawal
   leaves (benchlib/volume_fill.py): set-based SQL in chunks, every constraint and
   trigger on, the audit trail routed into month partitions as an installation
   partitioned before the first of them has them. Prints the fill's time, row counts and
   sizes (`--reuse` takes a database an earlier `--keep` run left, and its figures).
2. On that database and on an empty one laid out the same, the real stack (API, 2
   workers, the sandbox ledger in a database of its own, an instant provider, NATS),
   with the service's defaults and reconciliation off (the sandbox ledger does not
   hold the history's holds), one stack at a time:
   - withdrawals an earlier run left in flight in a kept database finished first;
   - a steady `--rate`/s (40) for `--seconds` (60) in `--rounds` (3) rounds that
     alternate between the two databases, each after a fresh start and a warm-up:
     submit -> SUCCEEDED p50/p95/p99 (the machine is shared: alternating puts both in
     the same stretches of its other load), and what each round cost and waited on:
     checkpoints, wait events, each statement's time where the server preloads
     pg_stat_statements (benchlib/volume_probe.py);
   - every query of the runbook (docs/ops.md, read when the bench runs; benchlib/
     forensics.py) with a real order: best of 3, and EXPLAIN (ANALYZE) of those that
     scan a table rather than look rows up;
   - retention of one month while the load goes on: the archiver (service/archive.py,
     what `service.ops archive run` and the workers' hourly job run) in a process of its
     own, first a day before the month is due (it writes the archive ahead), then, once
     the writers have caught up with what that held back (a day passes in between in
     production), with its clock set so that the oldest month is due and no other, up
     to 3 runs; its
     wall time, the writers' p99 before and during it, and every lock wait (pg_locks,
     sampled, with who waits and who holds it up). If no run took the month, once more
     with the stack stopped: what it costs alone, and the archive's size.
3. Prints each figure for both databases side by side, and a verdict against the issue's
   targets: p95 within 20% of the empty database's; every runbook query under 100 ms;
   a month's retention under 5 s, the writers' p99 during it within 2x of before, no
   lock wait over 1 s.

Options: --help.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from benchlib import forensics, sql
from benchlib import volume_fill as vf
from benchlib.prewarm import prewarm
from benchlib.servicestack import SERVICE_DEFAULTS, fresh
from benchlib.volume_load import Load, drain, latencies, p, say, settle, until_none
from benchlib.volume_probe import RoundProbe
from benchlib.volume_report import report
from benchlib.volume_retention import RETENTION, quiet_retention, retention
from psycopg.conninfo import make_conninfo

from devstack.embedded import database_url, start_embedded_nats
from engine.migrations import migrate
from sandbox.stack import ProviderSpec, Stack
from service.archive import Archiver

FULL, EMPTY, LEDGER = "bench_volume_full", "bench_volume_empty", "bench_volume_ledger"  # _<side>


# What the bench records of its fill in the full database, for --reuse.
MARKER = """
CREATE TABLE IF NOT EXISTS bench_volume_fill (
    withdrawals bigint, seed integer, first_month timestamptz, filled_at timestamptz,
    fill_s double precision, vacuum_s double precision)
"""
TABLES = (
    "order_queues",
    "order_tasks",
    "order_task_events",
    "webhook_inbox",
    "ledger_holds",
    "settle_slo_results",
    "outbox",
)


# ---------------------------------------------------------------------------- the fill


def build_full(args: argparse.Namespace, admin: str) -> tuple[str, bool]:
    """The full database's URL, and whether this run filled it."""
    url = make_conninfo(admin, dbname=FULL)
    if args.reuse and _filled(url):
        print(f"reusing {FULL} (--reuse): filled by an earlier run", flush=True)
        started = time.monotonic()
        migrate(url)  # migrations added since it was filled (timed: a big installation's)
        print(f"  migrated to the current schema in {time.monotonic() - started:.1f} s", flush=True)
        roll_up_judgements(url)
        return url, False
    now = datetime.now(UTC)
    since = vf.first_month(now, args.months)
    url = fresh(FULL, admin=admin)
    vf.shape_partitions(url, since)
    retire_legacy(url, since)
    plan = vf.Fill(args.withdrawals, since, now, args.seed, args.chunk)
    print(
        f"filling {args.withdrawals:,} withdrawals submitted from {since:%Y-%m-%d} to an hour"
        f" before {now:%Y-%m-%d %H:%M} UTC, {args.chunk:,} a transaction",
        flush=True,
    )
    every = max(1, args.withdrawals // args.chunk // 10)

    def progress(done: int, elapsed: float) -> None:
        if (done // args.chunk) % every == 0 or done == args.withdrawals:
            print(f"  {done:>11,} in {elapsed:7.1f} s ({done / elapsed:,.0f}/s)", flush=True)

    started = time.monotonic()
    vf.fill(url, plan, progress)
    fill_s = time.monotonic() - started
    roll_up_judgements(url)
    started = time.monotonic()
    # What autovacuum would have done by now: the visibility map (index-only scans) and
    # hint bits set, and statistics for the planner.
    sql(url, "VACUUM (ANALYZE)")
    vacuum_s = time.monotonic() - started
    sql(
        url,
        MARKER,
        "INSERT INTO bench_volume_fill VALUES (%s, %s, %s, %s, %s, %s)",
        params=(args.withdrawals, args.seed, since, now, fill_s, vacuum_s),
    )
    return url, True


def _filled(url: str) -> bool:
    try:
        return bool(sql(url, "SELECT 1 FROM bench_volume_fill"))
    except psycopg.OperationalError:
        return False  # no such database
    except psycopg.errors.UndefinedTable:
        return False


def retire_legacy(url: str, since: datetime) -> None:
    """Archive the legacy partition (empty: everything starts at `since`), as the
    installation's retention did long ago, so that the month timed later is the only
    one due then. The real archiver, its clock set to when the partition fell due."""
    archive = Path(tempfile.mkdtemp(prefix="bench-volume-legacy-"))
    try:
        Archiver(url, archive, RETENTION, clock=lambda: since + RETENTION).run()
    finally:
        shutil.rmtree(archive, ignore_errors=True)


def roll_up_judgements(url: str) -> None:
    """The settle objective's minutes for the history (0018): what the workers'
    periodic checks would have rolled up by now, an hour a call; here a day a call."""
    started, calls, previous = time.monotonic(), 0, None
    while True:
        found = sql(url, "SELECT settle_slo_roll_up(most => interval '1 day')")
        calls += 1
        if found == previous:
            break
        previous = found
    took = time.monotonic() - started
    print(f"  the settle judgements' minutes rolled up in {took:.1f} s ({calls} calls)", flush=True)


def fill_report(url: str, empty_bytes: int, reused: bool) -> dict[str, Any]:
    marker = sql(url, "SELECT withdrawals, first_month, fill_s, vacuum_s FROM bench_volume_fill")
    withdrawals, since, fill_s, vacuum_s = marker[0]
    if reused:
        print("\n(reused: the rows and sizes below are the database's now, with earlier runs'")
        print(" load in it and the months they archived gone)")
    counts = {t: int(sql(url, f"SELECT count(*) FROM {t}")[0][0]) for t in TABLES}
    sizes = {
        t: int(sql(url, "SELECT pg_total_relation_size(%s)", params=(t,))[0][0])
        for t in TABLES
        if t != "order_task_events"
    }
    sizes["order_task_events"] = int(
        sql(url, "SELECT sum(bytes) FROM v_event_partitions")[0][0] or 0
    )
    total = int(sql(url, "SELECT pg_database_size(current_database())")[0][0])
    print(f"\nfill: {withdrawals:,} withdrawals from {since:%Y-%m-%d}")
    print(
        f"  wrote them in {fill_s:.0f} s ({withdrawals / fill_s:,.0f} withdrawals/s,"
        f" {counts['order_task_events'] / fill_s:,.0f} audit rows/s);"
        f" VACUUM ANALYZE {vacuum_s:.0f} s"
    )
    print(f"  {'table':<22}{'rows':>14}{'per withdrawal':>16}{'MiB (with indexes)':>20}")
    for t in TABLES:
        print(
            f"  {t:<22}{counts[t]:>14,}{counts[t] / withdrawals:>16.2f}{sizes[t] / 2**20:>20,.0f}"
        )
    per_million = (total - empty_bytes) / withdrawals * 1e6
    print(
        f"  database {total / 2**30:.2f} GiB (an empty one: {empty_bytes / 2**20:.0f} MiB):"
        f" {per_million / 2**30:.2f} GiB per million withdrawals"
    )
    for part in sorted(partitions_sizes(url)):
        print(f"    {part[0]:<28}{part[1] / 2**20:>10,.0f} MiB")
    return {
        "withdrawals": withdrawals,
        "events": counts["order_task_events"],
        "bytes": total,
        "per_million": per_million,
        "fill_s": fill_s,
    }


def partitions_sizes(url: str) -> list[tuple[str, int]]:
    return [(str(n), int(b)) for n, b in sql(url, "SELECT name, bytes FROM v_event_partitions")]


# ------------------------------------------------------------------------ one database


def start_stack(url: str, name: str, nats_url: str) -> Stack:
    """The service's stack on `url`, its sandbox ledger in a database of its own."""
    stack = Stack(
        url,
        Path(tempfile.mkdtemp(prefix="bench-volume-")),
        [ProviderSpec("alpha", behaviour="instant", webhook_delay_ms=0)],
        workers=2,
        nats_url=nats_url,
        worker_concurrency=8,
        extra_env={**SERVICE_DEFAULTS, "RECONCILE_EVERY_S": "0"},
        ledger_database_url=fresh(f"{LEDGER}_{name}", schema=False),
    )
    return stack.start()


def run_both(urls: dict[str, str], nats_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The steady load on one database, then the other, in `--rounds` alternating rounds:
    the machine is shared and its other load drifts, and alternating puts each
    database's rounds in the same stretches of it. One stack at a time (each holds
    some 45 connections under load, and the server is shared), started afresh for
    each round and warmed up. The last round's stack also runs the runbook's queries
    and the retention."""
    tag = f"{int(time.time()) % 1_000_000:06d}"  # --reuse: the last run's load stays there
    out: dict[str, dict[str, Any]] = {name: {"rounds": [], "lat": [], "http": []} for name in urls}
    each = args.seconds / args.rounds
    for n in range(args.rounds):
        for name, url in urls.items():
            say(
                f"{name} database: round {n + 1} of {args.rounds}: {args.warmup_s:.0f} s warm-up,"
                f" {args.rate:.0f}/s for {each:.0f} s"
            )
            stack = start_stack(url, name, nats_url)
            try:
                if n == 0:
                    inherited(url, name)
                if args.prewarm:
                    warmed(url, name, out[name])
                probe = RoundProbe(url)
                warm = steady(url, stack, f"vol{tag}w{n}", args.warmup_s, args.rate, {})
                sent = steady(url, stack, f"vol{tag}s{n}", each, args.rate, out[name])
                probe.finish(out[name], warm + sent, f"vol{tag}s{n}")
                if n == args.rounds - 1:
                    say(f"{name} database: the runbook's queries")
                    out[name]["queries"] = queries(url)
                    say(f"{name} database: a month's retention under load")
                    out[name] |= retention(url, stack, f"vol{tag}r", args)
            finally:
                stack.stop()
                sql(database_url(), f'DROP DATABASE IF EXISTS "{LEDGER}_{name}" WITH (FORCE)')
            side = out[name]
            side.setdefault("quiet_s", float("nan"))
            if n == args.rounds - 1 and not side["archived"]:
                say(f"{name} database: the month again, the stack stopped")
                side |= quiet_retention(url, side["month"], side["clock"])
    for side in out.values():
        lat = side["lat"]
        side["p50"], side["p95"], side["p99"] = (p(lat, q) for q in (0.5, 0.95, 0.99))
        side["http99"] = p(side["http"], 0.99)
        sent, measured, refused, unfinished = (sum(r[k] for r in side["rounds"]) for k in range(4))
        side["load"] = (sent, measured, refused, unfinished)
    return out


def warmed(url: str, name: str, out: dict[str, Any]) -> None:
    """The indexes the load touches read into memory (benchlib/prewarm.py)."""
    got = prewarm(url)
    if not got.available:
        say(f"{name} database: no pg_prewarm on this server: the round starts as it is")
        return
    out["prewarmed"] = got.bytes
    say(
        f"{name} database: {got.indexes} hot indexes, {got.bytes / 2**20:,.0f} MiB, read into"
        f" memory in {got.seconds:.1f} s"
    )


def inherited(url: str, name: str) -> None:
    """An earlier run's withdrawals left unfinished in a kept database (its stack
    stopped while they were in flight) would be worked off during this run's load:
    the stack just started finishes them first. So with the timers an earlier run
    left (each withdrawal's webhook SLA timer, due minutes after it finished): the
    stack's timer pumps fire the ones due by now, each one a lock of an old task, and
    run 13's first full round spent 7 ms of the workers' CPU and 6 ms of the
    database's a withdrawal doing so (some 17,000 of them; docs/capacity.md)."""
    left = int(sql(url, "SELECT count(*) FROM order_queues WHERE status = 'ACTIVE'")[0][0])
    if left:
        say(f"{name} database: {left:,} withdrawals an earlier run left in flight; draining")
        took = drain(url, "%", datetime.now(UTC))
        still = int(sql(url, "SELECT count(*) FROM order_queues WHERE status = 'ACTIVE'")[0][0])
        say(f"{name} database: drained in {took:.0f} s, {still:,} still in flight")
    due = "SELECT count(*) FROM timers WHERE due_at <= %s"
    now = datetime.now(UTC)
    if timers := int(sql(url, due, params=(now,))[0][0]):
        say(f"{name} database: {timers:,} timers an earlier run left are due; firing them")
        took = until_none(url, due, (now,), 600)  # the stack's pumps fire them
        say(f"{name} database: fired in {took:.0f} s")


def steady(
    url: str, stack: Stack, prefix: str, seconds: float, rate: float, out: dict[str, Any]
) -> int:
    """One round of the steady load, drained; its figures added to `out` (none: a
    warm-up). The withdrawals it submitted."""
    since = datetime.now(UTC)
    load = Load(stack.api_url, prefix, rate)
    load.run(seconds)
    unfinished = settle(url, prefix, len(load.sent) - load.errors, since)
    if not out:
        return len(load.sent)
    lat = [s for _, s in latencies(url, prefix, since)]
    out["lat"] += lat
    out["http"] += [d for _, d, _ in load.sent]
    out["rounds"].append((len(load.sent), len(lat), load.errors, unfinished, p(lat, 0.95)))
    out.setdefault("loadavg", []).append(os.getloadavg()[0])
    return len(load.sent)


def queries(url: str) -> list[forensics.Timing]:
    """Every runbook query, with an order of a month ago when there is one (two tasks,
    so that a question about attempts has two), else the load's first."""
    found = sql(
        url,
        "SELECT q.order_id, t.id FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id"
        " WHERE q.created_at < now() - interval '30 days' ORDER BY q.created_at DESC,"
        " t.position DESC LIMIT 1",
    ) or sql(
        url,
        "SELECT q.order_id, t.id FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id"
        " ORDER BY q.created_at LIMIT 1",
    )
    order_id, task_id = found[0]
    return forensics.measure(url, forensics.extract(), str(order_id), str(task_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--withdrawals", type=int, default=5_000_000)
    parser.add_argument("--months", type=int, default=6, help="months of history before this one")
    parser.add_argument("--chunk", type=int, default=50_000, help="withdrawals a transaction")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rate", type=float, default=40.0, help="withdrawals/s of the load")
    parser.add_argument("--seconds", type=float, default=60.0, help="the steady load's length")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of it")
    # 30 s: at 10 s the first round's p95 was still cold on both sides (5M run of
    # 2026-12-07: 582 and 135 ms against 42-47 ms in the rounds after).
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument(
        "--no-prewarm",
        dest="prewarm",
        action="store_false",
        help="start each round with the page cache as the last left it (benchlib/prewarm.py)",
    )
    parser.add_argument("--before-s", type=float, default=20.0, help="load before retention")
    parser.add_argument("--after-s", type=float, default=5.0, help="load after retention")
    parser.add_argument("--keep", action="store_true", help="keep the full database")
    parser.add_argument("--reuse", action="store_true", help="use the database --keep left")
    parser.add_argument(
        "--fill-only", action="store_true", help="fill (or check) the kept database and stop"
    )
    args = parser.parse_args()
    admin = database_url(keep_running=True)
    nats_proc, nats_url = start_embedded_nats(store=Path(tempfile.mkdtemp()) / "nats")
    started = time.monotonic()
    try:
        full_url, filled_now = build_full(args, admin)
        if args.fill_only:
            args.keep = True
            return
        empty_url = fresh(EMPTY, admin=admin)
        since = vf.first_month(datetime.now(UTC), args.months)
        vf.shape_partitions(empty_url, since)
        retire_legacy(empty_url, since)
        empty_bytes = int(sql(empty_url, "SELECT pg_database_size(current_database())")[0][0])
        fill = fill_report(full_url, empty_bytes, args.reuse and not filled_now)
        sides = run_both({"empty": empty_url, "full": full_url}, nats_url, args)
        empty, full = sides["empty"], sides["full"]
        report(empty, full, fill)
        if full["archive_bytes"] and full["month_withdrawals"]:
            per_million = full["archive_bytes"] / full["month_withdrawals"] * 1e6
            print(f"archive: {per_million / 2**20:,.0f} MiB per million withdrawals (gzip CSV)")
    finally:
        nats_proc.terminate()
        sql(admin, f'DROP DATABASE IF EXISTS "{EMPTY}" WITH (FORCE)')
        if not args.keep:
            sql(admin, f'DROP DATABASE IF EXISTS "{FULL}" WITH (FORCE)')
    print(f"total runtime {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
