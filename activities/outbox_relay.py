"""The JetStream bridge: publishes the outbox, in order, exactly once per event.

- One relay at a time: every worker runs this loop, but only the holder of a
  PostgreSQL advisory lock (on its own connection) publishes. If that worker
  dies, its connection drops, the lock is freed and another worker takes over.
  One publisher in outbox-id order keeps each withdrawal's events in order.
- Exactly once: `Nats-Msg-Id` is the row's `event_id`, and the stream
  deduplicates within `duplicate_window` (a day). A relay killed after publishing
  but before marking the rows republishes them, and JetStream drops the repeats.
  The id is random and stored in the row, never the outbox id: a failover that
  lost commits rewinds that sequence, and JetStream would drop new events that
  reuse ids it has seen (docs/ha.md). A repeat that JetStream calls a duplicate is
  counted (`outbox_duplicates_total`): with such ids it is always our own replay.
- NATS down: publishing fails, nothing is marked, events accumulate in the
  outbox, and the loop retries with backoff until NATS is back.
- Published rows are pruned after `retention_s`.
- Idle, the relay sleeps on a LISTEN connection: every commit that writes the
  outbox notifies it (a statement trigger), and it lingers a moment after a
  wake-up so that a busy stream is published and marked in batches, one
  transaction a batch. The other workers try for the lock every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import nats
import psycopg
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from engine import metrics
from engine.db import Pool
from engine.rows import DbRow
from engine.wakeups import Wakeups, sleep

log = logging.getLogger("payment.relay")
RELAY_LOCK = 7_303_002
STREAM = "ORDERS"
SUBJECTS = ["order.>"]
DEDUP_WINDOW_S = 24 * 3600.0
CHANNEL = "payment_outbox"  # NOTIFY on every outbox insert (a trigger, schema.sql)
IDLE_POLL_S = 30.0  # listening, the leader still looks this often (a missed NOTIFY)
LINGER_S = 0.05  # after a wake-up, so that a busy stream goes out in batches
FOLLOWER_RETRY_S = 10.0  # how often a worker that is not the relay tries to become it

_BATCH = """
SELECT id, event_id, subject, payload, trace_id FROM outbox
WHERE published_at IS NULL ORDER BY id LIMIT %s
"""


class OutboxRelay:
    def __init__(
        self,
        pool: Pool,
        conninfo: str,
        nats_url: str,
        *,
        batch: int = 200,
        interval_s: float = 0.2,
        retention_s: float = 7 * 86400,
        pause_s: float = 0.0,
    ) -> None:
        self._pool, self._conninfo, self._url = pool, conninfo, nats_url
        self._batch, self._interval, self._retention = batch, interval_s, retention_s
        self._pause = pause_s  # between messages; only for tests that kill mid-batch
        self._nc: Any = None
        self._js: Any = None
        self._pruned_at = 0.0
        self._leader = False

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self._interval
        lock_conn: psycopg.AsyncConnection[Any] | None = None
        wakeups = Wakeups(self._conninfo, CHANNEL)
        try:
            while not stop.is_set():
                try:
                    lock_conn = lock_conn or await psycopg.AsyncConnection.connect(
                        self._conninfo, autocommit=True
                    )
                    moved = await self._step() if await self._lead(lock_conn) else 0
                    backoff = self._interval
                except Exception as exc:  # NATS or the database is away: keep the events
                    log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                    await self._disconnect()
                    if lock_conn is not None and lock_conn.broken:
                        lock_conn, self._leader = None, False
                    moved, backoff = 0, min(backoff * 2, 5.0)
                    await sleep(stop, None, backoff, backoff)
                    continue
                if moved >= self._batch:
                    continue  # more are waiting: go again at once
                if not self._leader:  # the leader's connection dropping frees the lock
                    await sleep(stop, None, FOLLOWER_RETRY_S, FOLLOWER_RETRY_S)
                elif await sleep(stop, wakeups, self._interval, IDLE_POLL_S):
                    # woken by a commit: let the commits right behind it join the batch
                    await sleep(stop, None, LINGER_S, LINGER_S)
        finally:
            await wakeups.close()
            await self._disconnect()
            if lock_conn is not None:
                await lock_conn.close()

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        if not self._leader:  # the lock is the session's until its connection closes
            query = "SELECT pg_try_advisory_lock(%s)"
            row = await (await conn.execute(query, (RELAY_LOCK,))).fetchone()
            self._leader = bool(row and row[0])
        return self._leader

    async def _step(self) -> int:
        """Publish one batch and mark it, in one transaction (one commit a batch)."""
        await self._connect()
        failure: Exception | None = None
        async with self._pool.connection() as conn:
            async with conn.transaction():
                rows = await (await conn.execute(_BATCH, (self._batch,))).fetchall()
                published: list[int] = []
                try:
                    for row in rows:
                        await self._publish(row)
                        published.append(row["id"])
                        if self._pause:
                            await asyncio.sleep(self._pause)
                except Exception as exc:  # mark what went out, then report it
                    failure = exc
                if published:
                    await conn.execute(
                        "UPDATE outbox SET published_at = now() WHERE id = ANY(%s)", (published,)
                    )
            if published:
                metrics.OUTBOX_PUBLISHED.inc(len(published))
            if failure is not None:
                raise failure
            await self._prune(conn)
        return len(rows)

    async def _publish(self, row: DbRow) -> None:
        event_id = row["event_id"]
        headers = {"Nats-Msg-Id": str(event_id)}
        if row["trace_id"]:
            headers["traceparent"] = f"00-{row['trace_id']}-{event_id.hex[:16]}-01"
        body = json.dumps({"event_id": str(event_id), **row["payload"]}).encode()
        ack = await self._js.publish(row["subject"], body, headers=headers, timeout=5)
        if ack.duplicate:
            metrics.OUTBOX_DUPLICATES.inc()

    async def _connect(self) -> None:
        if self._nc is not None and self._nc.is_connected:
            return
        await self._disconnect()
        self._nc = await nats.connect(
            self._url,
            connect_timeout=2,
            max_reconnect_attempts=0,
            allow_reconnect=False,
            error_cb=_nats_error,
        )
        self._js = self._nc.jetstream()
        try:
            await self._js.stream_info(STREAM)
        except NotFoundError:
            config = StreamConfig(name=STREAM, subjects=SUBJECTS, duplicate_window=DEDUP_WINDOW_S)
            await self._js.add_stream(config)

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _prune(self, conn: Any) -> None:
        if time.monotonic() - self._pruned_at < 60:
            return
        self._pruned_at = time.monotonic()
        await conn.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => %s)",
            (self._retention,),
        )


async def _nats_error(exc: Exception) -> None:
    """nats-py logs a lost connection at error level; the relay reconnects on its own
    (events wait in the outbox), so it is a warning here."""
    log.warning("nats: %s", type(exc).__name__)
