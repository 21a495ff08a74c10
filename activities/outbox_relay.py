"""The JetStream bridge: publishes the outbox exactly once per event, in order per
withdrawal.

- One relay at a time: every worker runs this loop, but only the holder of a
  PostgreSQL advisory lock (on its own connection) publishes. If that worker
  dies, its connection drops, the lock is freed and another worker takes over.
- Batches with asynchronous acknowledgements (activities/relay_publish.py):
  the relay reads up to `batch` unpublished rows in id order and sends the
  events of different withdrawals without waiting for one another; a
  withdrawal's next event goes only once its previous one is acknowledged.
  While a batch's acknowledgements are on their way, one transaction marks the
  batch before it (every acknowledgement of that one in) and reads the next,
  leaving out the batch in flight; the next goes out once this one is
  acknowledged in full. Sequential acknowledgements, a round trip an event,
  capped the relay near 5,000 events/s (docs/capacity.md has the figures).
- The guarantee: for every withdrawal, the stream holds each of its events
  once, in outbox-id order; its event N+1 is never stored before its event N,
  not even for a while. Because:
  1. A withdrawal's events become visible in id order: each is written under
     its queue row's lock, after the previous one committed. So a read of the
     lowest unmarked ids never holds an event of a withdrawal without that
     withdrawal's unmarked events before it: they are in the same read, or in
     the batch in flight, which is acknowledged in full before the read goes.
  2. An event is sent only once the previous event of its withdrawal is
     acknowledged, and an acknowledgement means stored: within a batch by
     chaining, across batches because a batch waits for the one before it.
  3. A failure (a refused event, an acknowledgement lost or late, NATS gone)
     marks only what was acknowledged, and the next attempt starts again from
     the lowest unmarked row: a failed event goes again before any later
     event of its withdrawal.
  4. `Nats-Msg-Id` is the row's `event_id`, and the stream deduplicates
     within `duplicate_window` (a day): what was stored but not marked (a
     relay killed between publish and mark, an acknowledgement lost) is
     dropped when it goes again.
  Across withdrawals the stream's order is not the outbox's. Events of no
  withdrawal (people's sign-ins) are one chain, in the order read. All of it
  rests on one relay at a time: the lock.
- The id is random and stored in the row, never the outbox id: a failover that
  lost commits rewinds that sequence, and JetStream would drop new events that
  reuse ids it has seen (docs/ha.md). A repeat that JetStream calls a duplicate is
  counted (`outbox_duplicates_total`): with such ids it is always our own replay.
- NATS down: publishing fails (no acknowledgement for `ack_timeout_s`), the
  acknowledged rows are marked, the rest accumulate in the outbox, and the loop
  retries with backoff until NATS is back.
- Published rows are pruned after `retention_s`.
- Idle, the relay sleeps on a LISTEN connection: a commit that writes the outbox
  notifies it (a statement trigger), and it lingers a moment after a wake-up so
  that a busy stream is published and marked in batches, one transaction a batch.
  The other workers try for the lock every few seconds.
- Awake, it polls: while events came within QUIET_S it looks every AWAKE_POLL_S
  and holds AWAKE_LOCK, and the trigger of a writer that cannot take that lock
  shared sends no NOTIFY (migration 0019). A NOTIFY is not free: PostgreSQL
  signals every backend that LISTENs in the database, whatever the channel, and
  each reads it in a transaction of its own; 8 listeners made it 14 of the 24
  commits a withdrawal cost (issue 24). Going back to sleep, the relay lets the
  lock go and looks again after each of DOZE_LOOKS_S: a writer that found it
  awake but committed after its last poll is published then (at worst at the
  next IDLE_POLL_S).
- Waking, the relay waits up to WAKE_WAIT_S for the lock. A writer holds it shared
  from its outbox insert to its commit, and under a burst some writer nearly always
  does: a relay that only tried for it stayed asleep for a quarter to a third of a
  burst of 2,000 (bench/throughput.py: 10.8-14.3 commits a withdrawal on PostgreSQL's
  counter where 8.7 was possible, the listeners' transactions the difference). While
  the relay waits, PostgreSQL refuses the lock shared to writers that ask after it
  (a request conflicts with a waiting one): they do not notify, and their events
  are in the outbox for the relay's next look. If the wait runs out (a writer held
  it that long), the relay dozes as after a quiet spell and looks again soon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats
import psycopg
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from psycopg.rows import tuple_row

from activities.outbox_prune import prune
from activities.relay_publish import Event, Outcome, Publisher
from engine import metrics
from engine.db import Pool
from engine.wakeups import Wakeups, sleep

log = logging.getLogger("payment.relay")
RELAY_LOCK = 7_303_002
STREAM = "ORDERS"
SUBJECTS = ["order.>"]
DEDUP_WINDOW_S = 24 * 3600.0
CHANNEL = "payment_outbox"  # NOTIFY on every outbox insert (a trigger, schema.sql)
IDLE_POLL_S = 30.0  # listening, the leader still looks this often (a missed NOTIFY)
LINGER_S = 0.05  # after a wake-up, so that a busy stream goes out in batches
AWAKE_LOCK = 7_303_024  # held by the relay while it polls (the trigger, migration 0019)
AWAKE_POLL_S = LINGER_S  # awake, it looks this often
QUIET_S = 1.0  # awake, this long with nothing published, it goes back to sleep
DOZE_LOOKS_S = (0.05, 0.5)  # then it looks again after these, listening in between
WAKE_WAIT_S = 0.1  # waking, the longest it waits for AWAKE_LOCK (writers' commits)
FOLLOWER_RETRY_S = 10.0  # how often a worker that is not the relay tries to become it
ACK_TIMEOUT_S = 5.0  # a batch with no acknowledgement for this long has lost NATS

# The body is built by the server: no JSON parsed and dumped again per event here.
# The batch in flight is left out: read ahead, the next batch starts after it.
_BATCH = """
SELECT id, coalesce(queue_id::text, '') AS withdrawal, subject, event_id::text, trace_id,
       (jsonb_build_object('event_id', event_id) || payload)::text AS body
FROM outbox WHERE published_at IS NULL AND id <> ALL(%s::bigint[]) ORDER BY id LIMIT %s
"""
# A bitmap scan (what the planner picks for a large LIMIT) visits every entry the
# partial index still holds for rows published since the last vacuum, each time;
# an ordered index scan marks them dead once and then steps over them.
_INDEX_SCAN = "SET LOCAL enable_bitmapscan = off"
_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY(%s::bigint[])"
Row = tuple[int, str, str, str, str | None, str]


class OutboxRelay:
    def __init__(
        self,
        pool: Pool,
        conninfo: str,
        nats_url: str,
        *,
        batch: int = 2000,
        interval_s: float = 0.2,
        retention_s: float = 7 * 86400,
        pause_s: float = 0.0,
        ack_timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        self._pool, self._conninfo, self._url = pool, conninfo, nats_url
        self._batch, self._interval, self._retention = batch, interval_s, retention_s
        self._pause = pause_s  # after each send; only for tests that kill mid-batch
        self._ack_timeout = ack_timeout_s
        self._nc: Any = None
        self._js: Any = None
        self._publisher: Publisher | None = None
        self._pruned_at = 0.0
        self._leader = False
        self._awake = False  # AWAKE_LOCK held on the lock connection's session
        self._published_at = 0.0  # monotonic: the last step that published anything
        self._dozing: list[float] = []  # the looks left after letting AWAKE_LOCK go
        self._acked: list[int] = []  # published by the last look, to mark with the next

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self._interval
        lock_conn: psycopg.AsyncConnection[Any] | None = None
        wakeups = Wakeups(self._conninfo, CHANNEL)
        try:
            while not stop.is_set():
                try:
                    lock_conn = lock_conn or await _lock_connection(self._conninfo)
                    moved = 0
                    if await self._lead(lock_conn):
                        # Listening before the read: a commit after it wakes us, not
                        # the next IDLE_POLL_S.
                        await wakeups.ready()
                        moved = await self._step(stop)
                    backoff = self._interval
                except Exception as exc:  # NATS or the database is away: keep the events
                    log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                    await self._disconnect()
                    if lock_conn is not None and lock_conn.broken:  # its locks went with it
                        lock_conn, self._leader, self._awake = None, False, False
                    moved, backoff = 0, min(backoff * 2, 5.0)
                    await sleep(stop, None, backoff, backoff)
                    continue
                if moved >= self._batch:
                    continue  # more are waiting: go again at once
                if not self._leader:  # the leader's connection dropping frees the lock
                    await sleep(stop, None, FOLLOWER_RETRY_S, FOLLOWER_RETRY_S)
                elif lock_conn is not None:
                    await self._pace(stop, lock_conn, wakeups, moved)
        finally:
            with contextlib.suppress(psycopg.Error):  # else published again, deduplicated
                await self._mark_acked()
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

    async def _pace(
        self, stop: asyncio.Event, conn: psycopg.AsyncConnection[Any], wakeups: Wakeups, moved: int
    ) -> None:
        """Wait until the next look: awake, AWAKE_POLL_S; dozing, the next of
        DOZE_LOOKS_S; asleep, a NOTIFY (then LINGER_S) or IDLE_POLL_S."""
        if moved:
            self._published_at = time.monotonic()
            await self._wake(conn)
        if self._awake and time.monotonic() - self._published_at < QUIET_S:
            await sleep(stop, None, AWAKE_POLL_S, AWAKE_POLL_S)
            return
        if self._awake:  # quiet: writers notify again from here on
            await conn.execute("SELECT pg_advisory_unlock(%s)", (AWAKE_LOCK,))
            self._awake, self._dozing = False, list(DOZE_LOOKS_S)
        await self._mark_acked()
        if self._dozing:
            look = self._dozing.pop(0)
            await sleep(stop, wakeups, look, look)
        elif await sleep(stop, wakeups, self._interval, IDLE_POLL_S):
            # woken by a commit: let the commits right behind it join the batch
            await sleep(stop, None, LINGER_S, LINGER_S)

    async def _wake(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Hold AWAKE_LOCK once the writers that hold it shared now have committed
        (they notified), waiting WAKE_WAIT_S at most (the session's lock_timeout);
        once: a session's advisory locks count, and one unlock must free it. Not
        granted in time: dozing, it looks again after DOZE_LOOKS_S."""
        if not self._awake:
            try:
                await conn.execute("SELECT pg_advisory_lock(%s)", (AWAKE_LOCK,))
                self._awake, self._dozing = True, []
            except psycopg.errors.LockNotAvailable:
                self._dozing = list(DOZE_LOOKS_S)

    async def _step(self, stop: asyncio.Event) -> int:
        """Publish batch after batch while they come full; the last one's size."""
        publisher = await self._connect()
        async with self._pool.connection() as conn:
            events = await self._turn(conn, self._acked, exclude=[])
            size, unmarked, self._acked = len(events), list[int](), []
            while events and not stop.is_set():
                size = len(events)
                events, outcome, unmarked = await self._overlap(conn, publisher, events, unmarked)
                unmarked += outcome.acked
                if outcome.failure is not None:
                    await self._turn(conn, unmarked)
                    raise outcome.failure
            # Marked in the next look's transaction, with its read: one commit a look
            # rather than two. Published and not yet marked, an event that goes again
            # (this process dies first) is dropped by the stream as a duplicate.
            self._acked = unmarked
            await self._prune(conn)
        return size

    async def _mark_acked(self) -> None:
        """Mark what the last look published, before a wait longer than a poll."""
        if self._acked:
            async with self._pool.connection() as conn:
                await self._turn(conn, self._acked)
            self._acked = []

    async def _overlap(
        self, conn: Any, publisher: Publisher, events: list[Event], unmarked: list[int]
    ) -> tuple[list[Event], Outcome, list[int]]:
        """Publish `events`; while their acknowledgements are on the way, mark the batch
        before them (all of it acknowledged) and read the batch after them, so that
        PostgreSQL and JetStream work side by side. The next batch goes out only once
        this one is acknowledged in full: per withdrawal, its events follow these."""
        sending = asyncio.create_task(publisher.publish(events, ack_timeout_s=self._ack_timeout))
        ahead: list[Event] = []
        if len(events) >= self._batch:  # more may be waiting
            try:
                ahead = await self._turn(conn, unmarked, exclude=[e.id for e in events])
            except BaseException:
                sending.cancel()  # unmarked: published again later, and deduplicated
                raise
            unmarked = []
        outcome = await sending
        metrics.OUTBOX_DUPLICATES.inc(outcome.duplicates)
        if outcome.failure is not None:
            ahead = []  # the next attempt starts again from the first unmarked row
        return ahead, outcome, unmarked

    async def _turn(
        self, conn: Any, mark: list[int], exclude: list[int] | None = None
    ) -> list[Event]:
        """One transaction: mark `mark` published, then (given `exclude`) read a batch."""
        rows: list[Row] = []
        if not mark and exclude is None:
            return []
        async with conn.transaction():
            if mark:
                await conn.execute(_MARK, (_array(mark),))
            if exclude is not None:
                await conn.execute(_INDEX_SCAN)
                cur = conn.cursor(row_factory=tuple_row)
                # Not prepared: planned each time, the batch in flight is a constant
                # the executor hashes; a generic plan compares each row with every id.
                params = (_array(exclude), self._batch)
                rows = await (await cur.execute(_BATCH, params, prepare=False)).fetchall()
        metrics.OUTBOX_PUBLISHED.inc(len(mark))
        return [_event(*row) for row in rows]

    async def _connect(self) -> Publisher:
        if self._publisher is not None and self._nc.is_connected:
            return self._publisher
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
        self._publisher = Publisher(self._nc, pause_s=self._pause)
        await self._publisher.start()
        return self._publisher

    async def _disconnect(self) -> None:
        nc, self._nc, self._js, self._publisher = self._nc, None, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _prune(self, conn: Any) -> None:
        if time.monotonic() - self._pruned_at < 60:
            return
        self._pruned_at = time.monotonic()
        await prune(conn, self._retention)


def _array(ids: list[int]) -> str:
    """A bigint[] literal: a sixth of the CPU of psycopg adapting the list."""
    return "{" + ",".join(map(str, ids)) + "}"


def _event(
    row_id: int, withdrawal: str, subject: str, event_id: str, trace_id: str | None, body: str
) -> Event:
    headers = {"Nats-Msg-Id": event_id}
    if trace_id:
        headers["traceparent"] = f"00-{trace_id}-{event_id.replace('-', '')[:16]}-01"
    return Event(row_id, withdrawal, subject, body.encode(), headers)


async def _nats_error(exc: Exception) -> None:
    """nats-py logs a lost connection at error level; the relay reconnects on its own
    (events wait in the outbox), so it is a warning here."""
    log.warning("nats: %s", type(exc).__name__)


async def _lock_connection(conninfo: str) -> psycopg.AsyncConnection[Any]:
    """The session that holds RELAY_LOCK and AWAKE_LOCK: autocommit, and waiting
    WAKE_WAIT_S at most for a lock (the only lock it waits for is AWAKE_LOCK's)."""
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    await conn.execute(f"SET lock_timeout = '{int(WAKE_WAIT_S * 1000)}ms'")
    return conn
