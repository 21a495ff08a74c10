"""What a deploy's migrations cost on a database full of withdrawals.

Builds the release-before-migrations schema (0001) holding `--withdrawals`
withdrawals (two tasks and six audit rows each, half of them still in flight),
then migrates it to the head while a writer keeps doing transition-sized
updates on those tables, as live traffic would. Prints how long the migration
took, the writer's worst and p99 latency during it (what a migration's table
locks cost live traffic), and the cost of a process's start-up checks.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import psycopg
from benchlib import DB, pct, sql
from psycopg.conninfo import make_conninfo

from devstack.embedded import database_url
from engine import migrations
from engine.startup import prepare_database
from workflows.registry import DEFINITIONS

FILL = [
    "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor, currency,"
    " status) SELECT md5(i::text)::uuid, 'o' || i, 'h', 'm', 1000, 'EUR',"
    " (CASE WHEN i %% 2 = 0 THEN 'ACTIVE' ELSE 'COMPLETED' END)::queue_status"
    " FROM generate_series(1, %s) i",
    "INSERT INTO order_tasks (id, queue_id, position, provider)"
    " SELECT gen_random_uuid(), q.id, p, 'p' || p FROM order_queues q, generate_series(0, 1) p",
    "INSERT INTO order_task_events (queue_id, task_id, event_type, actor)"
    " SELECT t.queue_id, t.id, 'e', 'bench' FROM order_tasks t, generate_series(1, 3)",
    "ANALYZE",
]


def live_writer(url: str, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    """Transition-sized writes (lock queue, then task; update both) until stopped."""
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM order_tasks LIMIT 2000").fetchall()]
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            with conn.transaction():
                conn.execute(
                    "SELECT 1 FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id"
                    " WHERE t.id = %s FOR UPDATE OF q, t",
                    (ids[i % len(ids)],),
                )
                conn.execute(
                    "UPDATE order_tasks SET version = version + 1 WHERE id = %s",
                    (ids[i % len(ids)],),
                )
            samples.append((started, time.perf_counter() - started))
            i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--withdrawals", type=int, default=200_000)
    args = parser.parse_args()
    admin = database_url()
    sql(admin, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', f'CREATE DATABASE "{DB}"')
    url = make_conninfo(admin, dbname=DB)
    try:
        migrations.migrate(url, upto=migrations.ours()[0].name)
        started = time.perf_counter()
        sql(url, *FILL, params=(args.withdrawals,))
        print(f"filled {args.withdrawals:,} withdrawals in {time.perf_counter() - started:.1f} s")

        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        writer = threading.Thread(target=live_writer, args=(url, stop, samples))
        writer.start()
        time.sleep(2)  # the writer alone first, for comparison
        started = time.perf_counter()
        applied = migrations.migrate(url)
        ended = time.perf_counter()
        time.sleep(0.5)
        stop.set()
        writer.join()
        before = [lat for at, lat in samples if at + lat < started]
        during = [lat for at, lat in samples if at < ended and at + lat >= started]
        took = ended - started

        checks = []
        for _ in range(20):
            started = time.perf_counter()
            prepare_database(url, DEFINITIONS)
            checks.append(time.perf_counter() - started)
        print(f"migrations applied: {', '.join(applied)}")
        print(f"migrate to head: {took * 1000:.0f} ms")
        for name, xs in (("before", before), ("during", during)):
            if xs:
                print(
                    f"live writer {name} migrating: {len(xs)} transitions,"
                    f" p50 {statistics.median(xs) * 1000:.2f} ms,"
                    f" p99 {pct(xs, 0.99) * 1000:.2f} ms, max {max(xs) * 1000:.2f} ms"
                )
        print(
            f"start-up checks (migrations + definitions in flight over"
            f" {args.withdrawals // 2:,} active): p50 {statistics.median(checks) * 1000:.1f} ms"
        )
    finally:
        sql(admin, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


if __name__ == "__main__":
    main()
