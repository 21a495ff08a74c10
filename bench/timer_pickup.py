"""Job-pickup latency with 0 / 100k / 1M pending timers, and the naive design for contrast.

Pickup latency = from the call that defers an immediate no-op probe job (its INSERT and
commit included) to the probe starting in a real in-process procrastinate worker. The
timer pump (engine.timers.run_pump) runs alongside, so its per-tick cost counts.
Contrast: 100k timers parked in procrastinate_jobs as future-scheduled jobs.

Run: .venv/bin/python bench/timer_pickup.py   (DATABASE_URL unset: embedded PostgreSQL)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import procrastinate
from benchlib import drop_database, fresh_database, pct, sql

from engine.db import Pool, open_pool
from engine.timers import _TAKE_DUE, pump_once, run_pump
from service.settings import Settings

SEED = 20_261_101
SAMPLES, NAIVE_SAMPLES, WARMUP, REPEAT = 300, 200, 20, 50
CONCURRENCY = 4  # one worker, 4 job slots (the service's own default is 8)
NAIVE_JOBS = 100_000
PUMP_BATCH = 500
# The job path's poll, pinned: this bench compares fetch costs, and procrastinate can
# lose a NOTIFY during a fetch (README), which costs a whole poll. The service's
# default poll (5 s) would make that loss, not the fetch, the whole measurement.
POLL_S = 0.5
TASK_ID = str(uuid.UUID(int=SEED))
RANDOM_GAP = (0.02, 0.1)  # random arrivals: a defer rarely overlaps the worker's own fetch
TIGHT_GAP = (0.002, 0.02)  # back-to-back: defer while the worker re-fetches after a start
Seed = Callable[[str, int], None]
FUTURE = "now() + interval '1 hour' + random() * interval '24 hours'"


@dataclass
class Row:
    label: str
    total_ms: list[float]  # defer call -> probe started
    defer_ms: list[float]  # the defer call alone (INSERT + commit)
    after_ms: list[float]  # defer call returned (committed) -> probe started
    pump_ms: float = math.nan
    explain_ms: float = math.nan
    fetch_ms: float = math.nan


def seed_timers(url: str, n: int) -> None:
    sql(
        url,
        "TRUNCATE timers",
        "DELETE FROM procrastinate_jobs",
        "SELECT setseed(0.42)",
        f"INSERT INTO timers (task_id, kind, due_at) SELECT %s, 'webhook_sla', {FUTURE}"
        " FROM generate_series(1, %s)",
        params=(TASK_ID, n),
    )
    sql(url, "VACUUM ANALYZE timers", "VACUUM ANALYZE procrastinate_jobs", "CHECKPOINT")


def seed_naive_jobs(url: str, n: int) -> None:
    """Future-scheduled timer jobs, as the naive design parks them. The per-row NOTIFY
    trigger is off during the bulk load only (no worker listens yet); events stay on."""
    notify = "procrastinate_jobs_notify_queue_job_inserted_v1"
    sql(
        url,
        "TRUNCATE timers",
        "SELECT setseed(0.42)",
        "BEGIN",
        f"ALTER TABLE procrastinate_jobs DISABLE TRIGGER {notify}",
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args, scheduled_at)"
        " SELECT 'timers', 'timer', jsonb_build_object('task_id', %s::text, 'kind',"
        f" 'webhook_sla', 'due_at', d::text), d FROM (SELECT {FUTURE} AS d"
        " FROM generate_series(1, %s)) s",
        f"ALTER TABLE procrastinate_jobs ENABLE TRIGGER {notify}",
        "COMMIT",
        params=(TASK_ID, n),
    )
    sql(url, *(f"VACUUM ANALYZE procrastinate_{t}" for t in ("jobs", "events")), "CHECKPOINT")


async def median_ms(fn: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def costs(row: Row, pool: Pool, app: procrastinate.App) -> str:
    """Fill in pump_once / fetch medians and the EXPLAIN ANALYZE time; return the plan."""
    row.pump_ms = await median_ms(lambda: pump_once(pool, app, PUMP_BATCH))

    async def fetch() -> None:
        async with pool.connection() as conn, conn.transaction(force_rollback=True):
            await conn.execute("SELECT id FROM procrastinate_fetch_job_v2(NULL, NULL)")

    row.fetch_ms = await median_ms(fetch)
    async with pool.connection() as conn, conn.transaction(force_rollback=True):
        explain = "EXPLAIN (ANALYZE, BUFFERS) " + _TAKE_DUE.replace("%s", str(PUMP_BATCH))
        plan = "\n".join(r["QUERY PLAN"] for r in await (await conn.execute(explain)).fetchall())
    m = re.search(r"Execution Time: ([\d.]+) ms", plan)
    row.explain_ms = float(m.group(1)) if m else math.nan
    return plan


async def measure(
    url: str, label: str, samples: int, gap: tuple[float, float], rng: random.Random, cfg: Settings
) -> Row:
    started: dict[int, float] = {}
    done = asyncio.Event()
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="probe", queue="probe", pass_context=True)
    async def probe(context: procrastinate.JobContext) -> None:
        assert context.job.id is not None
        started[context.job.id] = time.perf_counter()
        done.set()

    @app.task(name="timer", queue="timers")
    async def timer(task_id: str, kind: str, due_at: str) -> None:
        print(f"unexpected timer fired: {task_id} {kind} {due_at}", file=sys.stderr)

    row = Row(label, [], [], [])
    pool = await open_pool(url, max_size=4)
    stop = asyncio.Event()
    async with app.open_async():
        pump = asyncio.create_task(run_pump(pool, app, cfg.timer_pump_interval_s, stop))
        worker = asyncio.create_task(
            app.run_worker_async(
                name="bench",
                concurrency=CONCURRENCY,
                fetch_job_polling_interval=POLL_S,
                update_heartbeat_interval=cfg.heartbeat_s,
                stalled_worker_timeout=cfg.stalled_after_s,
                delete_jobs="successful",
                install_signal_handlers=False,
            )
        )
        await asyncio.sleep(1.0)  # registered and listening
        for i in range(WARMUP + samples):
            done.clear()
            t0 = time.perf_counter()
            job_id = await probe.defer_async()
            t1 = time.perf_counter()
            await asyncio.wait_for(done.wait(), timeout=30)
            if i >= WARMUP:
                row.total_ms.append((started[job_id] - t0) * 1000)
                row.defer_ms.append((t1 - t0) * 1000)
                row.after_ms.append((started[job_id] - t1) * 1000)
            await asyncio.sleep(rng.uniform(*gap))
        await asyncio.sleep(0.1)
        plan = await costs(row, pool, app)
        stop.set()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await pump
    await pool.close()
    if label == "1M timers":
        lines = [ln.strip() for ln in plan.splitlines()]
        keep = [ln for ln in lines if "timers_due" in ln or "Time:" in ln]
        keep.insert(1, next((ln for ln in lines if ln.startswith("Buffers:")), "no Buffers line"))
        print("  EXPLAIN (ANALYZE, BUFFERS) of the pump at 1M:\n    " + "\n    ".join(keep))
    return row


def print_table(rows: list[Row]) -> None:
    print(
        f"\n{'pending':<24}{'n':>4}{'p50':>7}{'p95':>7}{'p99':>7}{'max':>7}{'>100':>5}"
        f"{'defer99':>8}{'after99':>8}{'pump_once':>10}{'pumpEXPL':>9}{'fetch_v2':>9}"
    )
    for r in rows:
        q = "".join(f"{pct(r.total_ms, x):>7.1f}" for x in (0.5, 0.95, 0.99, 1.0))
        slow = sum(1 for x in r.total_ms if x > 100)
        print(
            f"{r.label:<24}{len(r.total_ms):>4}{q}{slow:>5}{pct(r.defer_ms, 0.99):>8.1f}"
            f"{pct(r.after_ms, 0.99):>8.1f}{r.pump_ms:>10.3f}{r.explain_ms:>9.3f}{r.fetch_ms:>9.3f}"
        )
    print(
        "ms. p50..max: defer call -> probe started; >100: samples over 100 ms (woken by the\n"
        "poll, not by NOTIFY); defer99: p99 of the defer call alone (INSERT + commit);\n"
        "after99: p99 of commit -> probe started; pump_once, fetch_v2: median of"
        f" {REPEAT} calls\nincl. round trip; pumpEXPL: server Execution Time of the pump's"
        " DELETE ... SELECT\n(rolled back); fetch_v2: procrastinate_fetch_job_v2(NULL, NULL)."
    )


async def main() -> None:
    t_start = time.perf_counter()
    rng = random.Random(SEED)
    url = fresh_database(TASK_ID)
    cfg = Settings(database_url=url)
    print(
        f"worker: 1 x concurrency={CONCURRENCY}, fetch_job_polling_interval="
        f"{POLL_S}s, timer pump every {cfg.timer_pump_interval_s}s (batch "
        f"{PUMP_BATCH}), heartbeat {cfg.heartbeat_s}s, delete_jobs=successful\n"
        f"gap between samples: random {RANDOM_GAP} s, or back-to-back {TIGHT_GAP} s"
    )
    naive = f"naive: {NAIVE_JOBS // 1000}k future jobs"
    plan: list[tuple[str, Seed | None, int, int, tuple[float, float]]] = [
        ("0 timers", seed_timers, 0, SAMPLES, RANDOM_GAP),
        ("100k timers", seed_timers, 100_000, SAMPLES, RANDOM_GAP),
        ("1M timers", seed_timers, 1_000_000, SAMPLES, RANDOM_GAP),
        ("1M timers, back-to-back", None, 0, SAMPLES, TIGHT_GAP),
        (naive, seed_naive_jobs, NAIVE_JOBS, NAIVE_SAMPLES, RANDOM_GAP),
        ("naive, back-to-back", None, 0, 80, TIGHT_GAP),
        ("0 timers (rerun: noise)", seed_timers, 0, SAMPLES, RANDOM_GAP),
    ]
    rows: dict[str, Row] = {}
    try:
        for label, seed, n, samples, gap in plan:
            t0 = time.perf_counter()
            if seed is not None:
                seed(url, n)
            took = f"seeded in {time.perf_counter() - t0:.1f} s" if seed else "same data"
            print(f"{label:<24} {took}", flush=True)
            rows[label] = await measure(url, label, samples, gap, rng, cfg)
    finally:
        drop_database()
    print_table(list(rows.values()))
    p0, p1m = pct(rows["0 timers"].total_ms, 0.99), pct(rows["1M timers"].total_ms, 0.99)
    print(
        f"\np99 at 1M = {p1m:.2f} ms vs p99 at 0 = {p0:.2f} ms: "
        f"within 2x: {'yes' if p1m <= 2 * p0 else 'no'}"
    )
    a0, a1m = pct(rows["0 timers"].after_ms, 0.99), pct(rows["1M timers"].after_ms, 0.99)
    print(f"(commit -> start only: p99 at 1M = {a1m:.2f} ms vs p99 at 0 = {a0:.2f} ms)")
    print(
        f"contrast: {naive}: p99 = {pct(rows[naive].total_ms, 0.99):.2f} ms, each fetch "
        f"{rows[naive].fetch_ms:.2f} ms (x{rows[naive].fetch_ms / rows['1M timers'].fetch_ms:.0f}"
        " the fetch at 1M timers)"
    )
    rerun = pct(rows["0 timers (rerun: noise)"].total_ms, 0.99)
    print(f"noise: the 0-timers level measured again last: p99 = {rerun:.2f} ms")
    print(f"total runtime {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
