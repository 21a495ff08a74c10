"""The outbox relay with asynchronous acknowledgements, on a real nats-server and
its own database: thousands of events of many withdrawals end up in the stream
exactly once and in order per withdrawal, also when the stream refuses one
event mid-batch and when NATS goes away mid-batch (activities/outbox_relay.py).
The stream is read back with a JetStream consumer (sandbox/stream_order.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from activities.outbox_prune import _PRUNE, prune
from activities.outbox_relay import (
    AWAKE_LOCK,
    DEDUP_WINDOW_S,
    IDLE_POLL_S,
    STREAM,
    SUBJECTS,
    OutboxRelay,
)
from activities.relay_publish import Event, Publisher
from engine.db import open_pool
from engine.migrations import migrate
from sandbox.servers import NatsServer
from sandbox.stream_order import check_stream, fill_outbox, stream_ids
from tests.conftest import fresh_database


@pytest.fixture(scope="module")
def relay_db() -> Iterator[str]:
    with fresh_database("_relay") as url:
        migrate(url)
        yield url


@pytest.fixture
def url(relay_db: str) -> str:
    with psycopg.connect(relay_db, autocommit=True) as conn:
        conn.execute("TRUNCATE outbox")
    return relay_db


@pytest.fixture
def nats_own(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's: a stream of its own, stopped at will."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def relay(url: str, nats_url: str, **options: Any) -> AsyncIterator[None]:
    pool = await open_pool(url, max_size=4)
    stop = asyncio.Event()
    task = asyncio.create_task(
        OutboxRelay(pool, url, nats_url, interval_s=0.05, **options).run(stop)
    )
    try:
        yield
    finally:
        stop.set()
        await task
        await pool.close()


async def until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)  # polling with a deadline


def unmarked(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
    return int(row[0]) if row else 0


async def drained(url: str) -> bool:
    return unmarked(url) == 0


async def stored(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(STREAM)).state.messages)
    except NotFoundError:  # the relay has not made it yet
        return 0
    finally:
        await nc.close()


async def set_max_msg_size(nats_url: str, size: int, *, create: bool) -> None:
    config = StreamConfig(
        name=STREAM, subjects=SUBJECTS, duplicate_window=DEDUP_WINDOW_S, max_msg_size=size
    )
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await (js.add_stream(config) if create else js.update_stream(config))
    finally:
        await nc.close()


async def test_thousands_of_events_are_stored_once_each_in_order(
    url: str, nats_own: NatsServer
) -> None:
    fill_outbox(url, random.Random(23), withdrawals=500, each=7)
    async with relay(url, nats_own.url, batch=500):
        await until(lambda: drained(url), "the outbox to drain")
    verdict = await check_stream(url, nats_own.url)
    assert verdict.events == 3500 and verdict.ok and verdict.in_order, verdict.line()


async def test_a_slow_batch_counts_every_acknowledgement(nats_own: NatsServer) -> None:
    # Slow sends: the first events' acknowledgements come back while the batch is
    # still sending, and every event counts as acknowledged, in the stream in order.
    await set_max_msg_size(nats_own.url, -1, create=True)
    events = [
        Event(n, f"w{n}", "order.task.creating", b"{}", {"Nats-Msg-Id": f"e{n}"}) for n in range(40)
    ]
    nc = await nats.connect(nats_own.url)
    try:
        publisher = Publisher(nc, pause_s=0.002)
        await publisher.start()
        outcome = await publisher.publish(events, ack_timeout_s=5)
    finally:
        await nc.close()
    assert outcome.failure is None and sorted(outcome.acked) == list(range(40))
    assert await stream_ids(nats_own.url) == [f"e{n}" for n in range(40)]


async def test_a_refused_event_holds_back_its_withdrawal_only(
    url: str, nats_own: NatsServer
) -> None:
    # The stream refuses messages over 2 KiB; one withdrawal's fourth event is
    # bigger, in the middle of the batch, with events of others on both sides.
    await set_max_msg_size(nats_own.url, 2048, create=True)
    fill_outbox(url, random.Random(7), withdrawals=60, each=7)
    with psycopg.connect(url) as conn:
        victim, withdrawal = conn.execute(
            "SELECT id, queue_id FROM outbox WHERE queue_id = (SELECT queue_id FROM outbox"
            " ORDER BY id OFFSET 200 LIMIT 1) ORDER BY id OFFSET 3 LIMIT 1"
        ).fetchone() or (0, None)
        conn.execute(
            "UPDATE outbox SET payload = payload || jsonb_build_object('pad', repeat('x', 4096))"
            " WHERE id = %s",
            (victim,),
        )
        held = [
            r[0]
            for r in conn.execute(
                "SELECT event_id::text FROM outbox WHERE queue_id = %s AND id >= %s",
                (withdrawal, victim),
            ).fetchall()
        ]
    async with relay(url, nats_own.url, batch=1000):
        await until(lambda: others_marked(url, withdrawal), "the other withdrawals' events")
        in_stream = set(await stream_ids(nats_own.url))
        assert len(held) == 4 and in_stream.isdisjoint(held)  # none after the refused one
        await set_max_msg_size(nats_own.url, -1, create=False)
        await until(lambda: drained(url), "the held-back events")
    verdict = await check_stream(url, nats_own.url)
    assert verdict.ok and verdict.in_order, verdict.line()


async def test_nats_going_away_mid_batch_loses_and_repeats_nothing(
    url: str, nats_own: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    fill_outbox(url, random.Random(11), withdrawals=150, each=7)

    async def mid_batch() -> bool:  # stored, not yet marked: a batch on its way
        return await stored(nats_own.url) - (1050 - unmarked(url)) >= 60

    # Slowed down (a pause after each send) so that NATS certainly stops mid-batch.
    with caplog.at_level(logging.WARNING, logger="payment.relay"):
        async with relay(url, nats_own.url, batch=300, pause_s=0.001, ack_timeout_s=1.0):
            await until(mid_batch, "a batch on its way")
            await asyncio.to_thread(nats_own.stop)
            await asyncio.to_thread(nats_own.start)
            await until(lambda: drained(url), "the outbox to drain after the outage")
    assert any(r.getMessage().startswith("outbox relay:") for r in caplog.records)  # it failed
    verdict = await check_stream(url, nats_own.url)
    assert verdict.events == 1050 and verdict.ok and verdict.in_order, verdict.line()


async def others_marked(url: str, withdrawal: object) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND queue_id <> %s",
            (withdrawal,),
        ).fetchone()
    return row == (0,)


async def test_the_prune_takes_old_published_rows_by_key_and_leaves_the_rest(url: str) -> None:
    """Oldest ids first, in batches, never reading the whole table: an old row held
    back (unpublished) and the young ones stay; every old published row goes, though
    they are more than a batch."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox (subject, payload, published_at)"
            " SELECT 'orders.test', '{}', CASE"
            "   WHEN i = 5 THEN NULL"  # held back: never published
            "   WHEN i <= 2500 THEN now() - interval '8 days'"
            "   ELSE now() - interval '1 day' END"
            " FROM generate_series(1, 3000) AS i"
        )
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        deleted = await prune(conn, 7 * 86400, batch=400)
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            str(row[0])
            for row in await (
                await conn.execute("EXPLAIN " + _PRUNE, {"batch": 400, "keep_s": 60.0})
            ).fetchall()
        )
    assert deleted == 2499
    with psycopg.connect(url) as conn:
        left = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM outbox"
        ).fetchone()
    assert left == (501, 1)
    assert "Index Scan using outbox_pkey on outbox" in plan and "Seq Scan" not in plan, plan


async def notifications(listener: psycopg.AsyncConnection[Any]) -> int:
    """The NOTIFYs `listener` has received by now (a short look: they come at once)."""
    return len([n async for n in listener.notifies(timeout=0.2)])


async def write_event(url: str, number: int) -> None:
    """One event, committed in a transaction of its own, as a transition writes it."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO outbox (subject, payload) VALUES ('order.test', %s)",
            (f'{{"number": {number}}}',),
        )


async def awake_lock_held(url: str) -> bool:
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
    with psycopg.connect(url) as conn:
        row = conn.execute(query, (AWAKE_LOCK,)).fetchone()
    return bool(row and row[0])


async def test_writers_wake_a_sleeping_relay_and_leave_an_awake_one_be(
    url: str, nats_own: NatsServer
) -> None:
    """A stream of commits notifies the relay once or so (awake, it polls and holds
    AWAKE_LOCK, migration 0019), not once a commit; quiet, it sleeps again, and the
    next commit notifies it and is published at once. No event waits for a poll."""
    listener = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await listener.execute("LISTEN payment_outbox")
    try:
        async with relay(url, nats_own.url):
            for number in range(60):  # a steady stream, an event every 20 ms
                await write_event(url, number)
                await asyncio.sleep(0.02)  # the load's pace, not a wait for anything
            await until(lambda: stored_at_least(nats_own.url, 60), "the stream published")
            during = await notifications(listener)
            await until(lambda: not_(awake_lock_held(url)), "the relay asleep", 5)
            await write_event(url, 60)
            started = time.monotonic()
            await until(lambda: stored_at_least(nats_own.url, 61), "the next event", 5)
            woken_in = time.monotonic() - started
            after = await notifications(listener)
    finally:
        await listener.close()
    assert during <= 5, f"{during} NOTIFYs for 60 commits to an awake relay"
    assert after == 1
    assert woken_in < IDLE_POLL_S / 10  # by the NOTIFY, not the idle poll


async def test_overlapping_writers_do_not_keep_the_relay_asleep(
    url: str, nats_own: NatsServer
) -> None:
    """Under a burst some writer nearly always holds AWAKE_LOCK shared, from its outbox
    insert to its commit. The relay still wakes (it waits for those writers, and the
    ones that ask meanwhile are refused the lock and do not notify), so a burst costs
    a few NOTIFYs, not one a commit (each one a transaction in every listener)."""
    listener = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await listener.execute("LISTEN payment_outbox")
    writers, each = 6, 20

    async def writer(number: int) -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await asyncio.sleep(0.005 * number)  # staggered: their transactions overlap
            for n in range(each):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO outbox (subject, payload) VALUES ('order.test', %s)",
                        (f'{{"writer": {number}, "n": {n}}}',),
                    )
                    await asyncio.sleep(0.03)  # the rest of a transition, the lock held

    try:
        async with relay(url, nats_own.url):
            await write_event(url, 0)  # the relay woken once, then asleep again
            await until(lambda: stored_at_least(nats_own.url, 1), "the first event")
            await until(lambda: not_(awake_lock_held(url)), "the relay asleep", 5)
            await notifications(listener)
            await asyncio.gather(*(writer(number) for number in range(writers)))
            await until(lambda: stored_at_least(nats_own.url, 1 + writers * each), "the burst")
            during = await notifications(listener)
    finally:
        await listener.close()
    assert during <= 10, f"{during} NOTIFYs for {writers * each} overlapping commits"


async def stored_at_least(nats_url: str, count: int) -> bool:
    return await stored(nats_url) >= count


async def not_(probe: Awaitable[bool]) -> bool:
    return not await probe
