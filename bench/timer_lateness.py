"""Timer lateness with the service's default settings.

2 000 timers due uniformly over 10 s (starting 0.5 s after the insert) go into the
`timers` table while two in-process "workers" run, each as the service runs one: the
real timer pump (engine.timers.run_pump) beside a real procrastinate worker
(concurrency 2). By default the pump delivers each due timer itself, as the service's
workers do (`fire`, one transaction per timer); `--via jobs` measures the older path
(the pump hands due timers to procrastinate as jobs; their start is recorded).
Lateness = delivered - due_at. Two pumps compete for the same rows (FOR UPDATE SKIP
LOCKED), so the count also checks exactly-once.

Run: .venv/bin/python bench/timer_lateness.py [--via jobs]
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
import uuid
from collections import Counter
from datetime import datetime

import procrastinate
from benchlib import drop_database, fresh_database, pct, sql
from procrastinate import App

from engine.db import Pool, open_pool
from engine.journal import Conn
from engine.timers import CHANNEL, run_pump
from service.settings import Settings

SEED = 20_261_102
N_TIMERS = 2_000
SPREAD_S, LEAD_S = 10.0, 0.5
WORKERS, CONCURRENCY = 2, 2
TASK_ID = str(uuid.UUID(int=SEED))
LIMIT_MS = 1000.0
VIA = "pump"  # or "jobs": see the docstring
Fired = tuple[str, str, float, int]  # kind (unique per timer), due_at ISO, started_at, job id
# bench-only: when each job row was inserted (the pump's moment), kept after the job's delete
INSERT_CLOCK = """
CREATE TABLE bench_inserted (job_id bigint PRIMARY KEY, at timestamptz NOT NULL);
CREATE FUNCTION bench_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench_inserted VALUES (NEW.id, clock_timestamp()); RETURN NEW; END $$;
CREATE TRIGGER bench_inserted AFTER INSERT ON procrastinate_jobs
    FOR EACH ROW EXECUTE FUNCTION bench_inserted();
"""


def build_app(url: str, fired: list[Fired], all_in: asyncio.Event) -> App:
    """A separate App with the service's task names: "timer" records its start time."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="timer", queue="timers", pass_context=True)
    async def timer(
        context: procrastinate.JobContext, task_id: str, kind: str, due_at: str
    ) -> None:
        fired.append((kind, due_at, time.time(), context.job.id or 0))
        if len(fired) >= N_TIMERS:
            all_in.set()

    @app.task(name="probe", queue="probe")
    async def probe() -> None:
        return None

    return app


async def run(url: str, cfg: Settings) -> list[Fired]:
    fired: list[Fired] = []
    all_in = asyncio.Event()
    apps = [build_app(url, fired, all_in) for _ in range(WORKERS)]
    pools = [await open_pool(url, max_size=3) for _ in range(WORKERS)]
    stop = asyncio.Event()
    rng = random.Random(SEED)
    async with contextlib.AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.open_async())

        async def deliver(conn: Conn, task_id: str, kind: str, due_at: datetime) -> None:
            # the pump's own path
            fired.append((kind, due_at.isoformat(), time.time(), len(fired) + 1))
            if len(fired) >= N_TIMERS:
                all_in.set()

        async def pump(pool: Pool, app: App, phase: float) -> None:
            await asyncio.sleep(phase)
            fire = deliver if VIA == "pump" else None
            await run_pump(pool, app, cfg.timer_pump_interval_s, stop, conninfo=url, fire=fire)

        # separate processes tick at unrelated moments: random start phases
        phases = [rng.uniform(0, cfg.timer_pump_interval_s) for _ in apps]
        print("pump start phases: " + ", ".join(f"{x * 1000:.0f} ms" for x in phases))
        pumps = [
            asyncio.create_task(pump(p, a, x)) for p, a, x in zip(pools, apps, phases, strict=True)
        ]
        workers = [
            asyncio.create_task(
                app.run_worker_async(
                    name=f"bench-{i}",
                    concurrency=CONCURRENCY,
                    fetch_job_polling_interval=cfg.fetch_interval_s,
                    update_heartbeat_interval=cfg.heartbeat_s,
                    stalled_worker_timeout=cfg.stalled_after_s,
                    delete_jobs="successful",
                    install_signal_handlers=False,
                )
            )
            for i, app in enumerate(apps)
        ]
        await asyncio.sleep(1.0)  # registered, listening, pumping
        t0 = time.perf_counter()
        sql(
            url,
            "SELECT setseed(0.42)",
            "INSERT INTO timers (task_id, kind, due_at) SELECT %s, 'bench-' || g,"
            " now() + %s * interval '1 second' + random() * %s * interval '1 second'"
            " FROM generate_series(1, %s) g",
            params=(TASK_ID, LEAD_S, SPREAD_S, N_TIMERS),
        )
        sql(url, f"NOTIFY {CHANNEL}")  # as engine.timers.schedule does for a timer due soon
        print(f"inserted {N_TIMERS} timers in {(time.perf_counter() - t0) * 1000:.0f} ms")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), timeout=LEAD_S + SPREAD_S + 20)
        await asyncio.sleep(2.0)  # let any duplicate show up
        stop.set()
        for w in workers:
            w.cancel()
        for w in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
        await asyncio.gather(*pumps)
    for pool in pools:
        await pool.close()
    return fired


def report(url: str, fired: list[Fired]) -> None:
    counts = Counter(f[0] for f in fired)
    dupes = sum(c - 1 for c in counts.values() if c > 1)
    missing = N_TIMERS - len(counts)
    left = sql(url, "SELECT count(*) FROM timers")[0][0]
    rows = sql(url, "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1")
    jobs = ", ".join(f"{status} {n}" for status, n in rows) or "0"
    print(
        f"fired {len(fired)} of {N_TIMERS}: distinct {len(counts)}, duplicates {dupes},"
        f" missing {missing}; timers left in table {left}; jobs left {jobs}"
    )
    once = len(fired) == N_TIMERS and dupes == 0 and missing == 0 and left == 0
    print(f"every timer fired exactly once: {'yes' if once else 'no'}")
    due = {f[3]: datetime.fromisoformat(f[1]).timestamp() for f in fired}
    late = [(at - due[job]) * 1000 for _, _, at, job in fired]
    if not late:
        print(f"p99 lateness n/a ms <= {LIMIT_MS:.0f} ms: no")
        return
    q = {name: pct(late, x) for name, x in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}
    print(
        f"lateness (started_at - due_at) over {len(late)} timers, ms: min {min(late):.1f}"
        + "".join(f"  {k} {v:.1f}" for k, v in q.items())
        + f"  max {max(late):.1f}  mean {sum(late) / len(late):.1f}"
    )
    rows = sql(url, "SELECT job_id, extract(epoch FROM at)::float8 FROM bench_inserted")
    inserted: dict[int, float] = dict(rows)
    parts = (
        {}
        if VIA == "pump"
        else {
            "due -> pump inserted the job": [(inserted[j] - due[j]) * 1000 for *_, j in fired],
            "job inserted -> started": [(at - inserted[j]) * 1000 for *_, at, j in fired],
        }
    )
    for name, xs in parts.items():
        print(
            f"  {name:<29}: p50 {pct(xs, 0.5):6.1f}  p99 {pct(xs, 0.99):6.1f}  max {max(xs):6.1f}"
        )
    verdict = "yes" if q["p99"] <= LIMIT_MS else "no"
    print(f"p99 lateness {q['p99']:.0f} ms <= {LIMIT_MS:.0f} ms: {verdict}")


async def main() -> None:
    t_start = time.perf_counter()
    url = fresh_database(TASK_ID)
    sql(url, INSERT_CLOCK)
    cfg = Settings(database_url=url)
    print(
        f"{WORKERS} in-process workers, each: run_pump (due timers delivered via {VIA}) +"
        f" procrastinate worker (concurrency={CONCURRENCY}, fetch_job_polling_interval="
        f"{cfg.fetch_interval_s}s, heartbeat {cfg.heartbeat_s}s, delete_jobs=successful)"
    )
    try:
        fired = await run(url, cfg)
        report(url, fired)
    finally:
        drop_database()
    print(f"total runtime {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    VIA = "jobs" if sys.argv[1:] == ["--via", "jobs"] else "pump"
    asyncio.run(main())
