"""What moving a full audit trail over to the partitioned table costs (migrations
0013-0015, docs/upgrades.md "The partitioned audit trail").

Builds the schema of the release before (0012) holding `--events` audit rows (ten per
withdrawal), then takes the documented path for a big installation while a writer
keeps appending audit rows as that release does (no key) and reading a timeline:
0013; the key's index by hand, CONCURRENTLY; 0014 (VALIDATE); 0015 and 0016. Prints
each step's time and the writer's worst latency during it (what the step's locks cost
live traffic), then how long detaching a month takes while the writer runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from multiprocessing import Event, Process, Queue
from multiprocessing.synchronize import Event as EventType

import psycopg
from benchlib import DB, sql
from psycopg.conninfo import make_conninfo

from devstack.embedded import database_url
from engine import migrations

FILL = [
    "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor, currency,"
    " status) SELECT md5(i::text)::uuid, 'o' || i, 'h', 'm', 1000, 'EUR', 'COMPLETED'"
    " FROM generate_series(1, %s / 10) i",
    "INSERT INTO order_task_events (queue_id, event_type, actor, payload)"
    " SELECT q.id, 'e', 'bench', '{\"event\": \"to_executing\", \"version\": 3}'"
    " FROM order_queues q, generate_series(1, 10)",
    "VACUUM ANALYZE order_task_events",
]
KEY = (
    "CREATE UNIQUE INDEX CONCURRENTLY order_task_events_legacy_pkey"
    " ON order_task_events (id, queue_created_at)"
)
Step = Callable[[], object]


def live_writer(url: str, stop: EventType, out: Queue[list[tuple[float, float]]]) -> None:
    """An audit row as the release before writes it, and a timeline read, per turn; in
    a process of its own, so that nothing of the migrating one (its GIL) slows it."""
    samples: list[tuple[float, float]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        queue = conn.execute("SELECT id FROM order_queues LIMIT 1").fetchone()
        assert queue is not None
        while not stop.is_set():
            started = time.perf_counter()
            conn.execute(
                "INSERT INTO order_task_events (queue_id, event_type, actor) VALUES (%s, 'w', 'b')",
                (queue[0],),
            )
            conn.execute("SELECT count(*) FROM order_task_events WHERE queue_id = %s", (queue[0],))
            samples.append((started, time.perf_counter() - started))
    out.put(samples)


class Steps:
    """Each step's start and end; the writer's turns are matched to them at the end."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float, float]] = []

    def __call__(self, name: str, step: Step) -> None:
        started = time.perf_counter()
        step()
        self.done.append((name, started, time.perf_counter()))

    def report(self, samples: list[tuple[float, float]]) -> None:
        for name, started, ended in self.done:
            during = [lat for at, lat in samples if at < ended and at + lat >= started]
            starts = sorted(at for at, _ in samples if started <= at < ended)
            gaps = [b - a for a, b in zip([started, *starts], [*starts, ended], strict=True)]
            print(
                f"{name:<44} {ended - started:8.2f} s   writer: {len(during):6d} turns,"
                f" p50 {statistics.median(during or [0]) * 1000:.2f} ms,"
                f" max {max(during or [0]) * 1000:.1f} ms; longest pause {max(gaps) * 1000:.0f} ms"
            )


def detach_a_month(url: str) -> None:
    """A month of 10 withdrawals, detached as service/archive.py does it."""
    with psycopg.connect(url, autocommit=True) as conn:
        name, lower = conn.execute(
            "SELECT name, lower FROM v_event_partitions WHERE lower IS NOT NULL ORDER BY lower"
        ).fetchone() or ("", None)
        for _ in range(10):
            queue = uuid.uuid4()
            conn.execute(
                "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor,"
                " currency, status, created_at)"
                " VALUES (%s, %s, 'h', 'm', 1, 'EUR', 'COMPLETED', %s)",
                (queue, str(queue), lower),
            )
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '2s'")
            conn.execute("LOCK TABLE dead_letters, ledger_findings IN SHARE MODE")
            conn.execute(f"ALTER TABLE order_task_events DETACH PARTITION {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    args = parser.parse_args()
    admin = database_url()
    sql(admin, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', f'CREATE DATABASE "{DB}"')
    url = make_conninfo(admin, dbname=DB)
    ours = migrations.ours()
    try:
        migrations.migrate(url, upto=ours[11].name)  # 0012: the release before
        started = time.perf_counter()
        sql(url, *FILL, params=(args.events,))
        size = sql(url, "SELECT pg_size_pretty(pg_total_relation_size('order_task_events'))")
        took = time.perf_counter() - started
        print(f"filled {args.events:,} audit rows ({size[0][0]}) in {took:.1f} s")
        stop, out = Event(), Queue()  # type: ignore[var-annotated]
        writer = Process(target=live_writer, args=(url, stop, out))
        writer.start()
        step = Steps()
        step("the writer alone", lambda: time.sleep(2))
        step("0013 column and NOT VALID check", lambda: migrations.migrate(url, upto=ours[12].name))
        step("key index, by hand, CONCURRENTLY", lambda: sql(url, KEY))
        step("0014 VALIDATE (index found)", lambda: migrations.migrate(url, upto=ours[13].name))
        step("0015 partitioned, 0016 catalog", lambda: migrations.migrate(url))
        step("detach a month (the archive's first step)", lambda: detach_a_month(url))
        time.sleep(0.5)
        stop.set()
        step.report(out.get())
        writer.join()
    finally:
        sql(admin, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


if __name__ == "__main__":
    main()
