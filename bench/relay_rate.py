"""How fast the outbox relay drains: events/s from PostgreSQL to JetStream.

Fills `outbox` with N events (`--count`, default 20,000) of a withdrawal's
usual size, starts one real OutboxRelay against nats-server (the embedded
binary), and times it from start to the last row marked published; then
checks that JetStream holds each event exactly once. One publisher is the
design (events stay in order), so this is the ceiling of the whole service's
event stream: divide by the events per withdrawal (about eight).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import nats
from benchlib import drop_database, fresh_database

from activities.outbox_relay import STREAM, OutboxRelay
from devstack.embedded import start_embedded_nats
from engine.db import open_pool


async def run(url: str, nats_url: str, count: int) -> None:
    pool = await open_pool(url, max_size=4)
    payload = json.dumps({"event": "funds_frozen", "version": 3, "order_id": "o" * 24})
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO outbox (subject, payload, trace_id) SELECT 'order.task.creating',"
            " %s::jsonb, md5(i::text) FROM generate_series(1, %s) i",
            (payload, count),
        )
    stop = asyncio.Event()
    relay = OutboxRelay(pool, url, nats_url)
    started = time.perf_counter()
    task = asyncio.create_task(relay.run(stop))
    while True:
        async with pool.connection() as conn:
            row = await (
                await conn.execute("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
            ).fetchone()
        if row is not None and row["n"] == 0:
            break
        await asyncio.sleep(0.05)  # polling the table, not synchronising
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    nc = await nats.connect(nats_url)
    info = await nc.jetstream().stream_info(STREAM)
    await nc.close()
    await pool.close()
    print(f"relay: {count} events in {elapsed:.2f} s = {count / elapsed:.0f} events/s")
    held = info.state.messages
    print(f"JetStream holds {held} messages (exactly once: {'yes' if held == count else 'NO'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    nats_proc, nats_url = start_embedded_nats(store=Path(tempfile.mkdtemp()) / "nats")
    try:
        asyncio.run(run(fresh_database(str(uuid.uuid4())), nats_url, args.count))
    finally:
        nats_proc.terminate()
        drop_database()


if __name__ == "__main__":
    main()
