"""How fast the outbox relay drains: events/s from PostgreSQL to JetStream.

A backlog of `--count` events (default 100,000): withdrawals of seven events
each, what a happy-path withdrawal over one provider writes (counted on a real
stack; eight with a second provider that gets cancelled, twelve when the first
declines), interleaved as concurrent withdrawals write them, bodies of a real
event's size. One real OutboxRelay (`--batch`: the service's `OUTBOX_BATCH`
default unless given), under uvloop as in worker.py, runs against a
nats-server of its own (the embedded binary, a fresh JetStream store: the check
needs a stream holding this run's events only) on a database of its own
(`payment_bench_relay`). Timed from the commit of the backlog (one COPY; the
relay already listening) to the last row marked published, with the CPU that
the relay's process, PostgreSQL and nats-server spent meanwhile. Then the
stream is read back with a consumer: every event exactly once, and each
withdrawal's events in outbox order (exit 1 if not). The relay is the whole
service's event stream (one publisher at a time), so events/s divided by seven
is the withdrawals/s it supports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import nats as nats_client
import psutil
import uvloop
from benchlib import sql
from benchlib.measure import cpu_s, server_cpu_s
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from psycopg.conninfo import make_conninfo

from activities.outbox_relay import CHANNEL, STREAM, OutboxRelay
from devstack.embedded import database_url, start_embedded_nats
from engine.db import Pool, open_pool
from engine.migrations import migrate
from sandbox.stream_order import HAPPY_PATH, check_stream, fill_outbox
from service.settings import Settings

EACH = len(HAPPY_PATH)
DB = "payment_bench_relay"  # its own: other benches may be using payment_bench


class Nats(NamedTuple):
    url: str
    pid: int


class Cpu(NamedTuple):
    relay: float  # this process: the relay, and the polling beside it
    backends: float  # the PostgreSQL backends serving this database
    server: float  # and the server's shared writers, autovacuum (anyone's): a bound
    nats: float

    @classmethod
    def now(cls, nats_pid: int) -> Cpu:
        server = server_cpu_s(DB)
        return cls(cpu_s([os.getpid()]), _backends_cpu_s(), server, cpu_s([nats_pid]))


def _backends_cpu_s() -> float:
    titled = (p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"])
    ours = [p.pid for p in titled if " ".join(p.info["cmdline"]).find(f" {DB} ") > 0]
    return cpu_s(ours)


class Timing(NamedTuple):
    elapsed_s: float
    cpu: Cpu


async def drain(url: str, nats: Nats, batch: int, fill: Callable[[], int]) -> Timing:
    """Start the relay on an empty outbox, wait until it is ready (stream made,
    listening), commit the backlog in one go and time it to the last row marked."""
    pool = await open_pool(url, max_size=4)
    stop = asyncio.Event()
    relay = asyncio.create_task(OutboxRelay(pool, url, nats.url, batch=batch).run(stop))
    await _until(lambda: _stream_exists(nats.url))
    await _until(lambda: _listening(pool))
    target = _published() + fill()  # one COPY, one commit: the relay wakes on its NOTIFY
    started, cpu = time.perf_counter(), Cpu.now(nats.pid)
    await _until(lambda: _drained(pool, target))
    elapsed, after = time.perf_counter() - started, Cpu.now(nats.pid)
    stop.set()
    await relay
    await pool.close()
    return Timing(elapsed, Cpu(*(b - a for a, b in zip(cpu, after, strict=True))))


async def _until(probe: Callable[[], Awaitable[bool]], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError("the relay did not get there")
        await asyncio.sleep(0.01)  # polling, not synchronising


async def _stream_exists(nats_url: str) -> bool:
    nc = await nats_client.connect(nats_url)
    try:
        await nc.jetstream().stream_info(STREAM)
        return True
    except NotFoundError:
        return False
    finally:
        await nc.close()


async def _listening(pool: Pool) -> bool:
    async with pool.connection() as conn:
        query = (
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = %s"
        )
        row = await (await conn.execute(query, (f"LISTEN {CHANNEL}",))).fetchone()
    return row is not None and row["n"] > 0


def _published() -> float:
    """Rows the relay (in this process) marked published: polling the table would
    cost PostgreSQL more than the relay does (an index-only scan over every row
    published since the last vacuum, each time)."""
    return REGISTRY.get_sample_value("outbox_published_total") or 0.0


async def _drained(pool: Pool, target: float) -> bool:
    if _published() < target:
        return False
    async with pool.connection() as conn:  # once at the end: nothing left behind
        query = "SELECT EXISTS (SELECT FROM outbox WHERE published_at IS NULL) AS waiting"
        row = await (await conn.execute(query)).fetchone()
    return row is not None and not row["waiting"]


async def run(url: str, nats: Nats, count: int, batch: int, seed: int) -> bool:
    withdrawals = count // EACH
    events = withdrawals * EACH

    def fill() -> int:
        fill_outbox(url, random.Random(seed), withdrawals, EACH)
        return events

    timing = await drain(url, nats, batch, fill)
    rate = events / timing.elapsed_s
    took = f"{events} events in {timing.elapsed_s:.2f} s"
    print(f"relay (batch {batch}): {took} = {rate:,.0f} events/s")
    print(f"  = {rate / EACH:,.0f} withdrawals/s at {EACH} events per withdrawal")
    relay, backends, server, nats_server = (1e6 * cpu / events for cpu in timing.cpu)
    print(
        f"  CPU per event: relay process {relay:.0f} us, nats-server {nats_server:.0f} us,"
        f" PostgreSQL backends {backends:.0f} us ({server:.0f} us with the server's"
        " WAL, checkpoint and autovacuum processes, anyone's)"
    )
    verdict = await check_stream(url, nats.url)
    print(verdict.line())
    return verdict.ok and verdict.in_order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=Settings.model_fields["outbox_batch"].default)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    admin = database_url()
    sql(admin, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', f'CREATE DATABASE "{DB}"')
    nats_proc, nats_url = start_embedded_nats(store=Path(tempfile.mkdtemp()) / "nats")
    try:
        url = make_conninfo(admin, dbname=DB)
        migrate(url)
        # uvloop, as worker.py runs the relay
        ok = uvloop.run(run(url, Nats(nats_url, nats_proc.pid), args.count, args.batch, args.seed))
    finally:
        nats_proc.terminate()
        sql(admin, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
