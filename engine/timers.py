"""Durable timers that keep job pickup cost flat however many are pending.

A timer is a row in `timers` (index on due_at), written in the transition's
transaction. The pump, a small loop inside every worker, moves due rows into
procrastinate as immediate jobs: `DELETE … WHERE id IN (SELECT … WHERE due_at
<= now() ORDER BY due_at LIMIT n FOR UPDATE SKIP LOCKED)` plus the job inserts,
in one transaction. N workers pump concurrently without taking the same row,
and a crash between the delete and the commit loses nothing.

Between pumps it sleeps until the next due timer, at most SOON_S: an idle
worker's pump costs one transaction every half minute, not five a second. A timer
scheduled to fall due sooner than that sends a NOTIFY with its transaction, and
the pumps' LISTEN connections wake them. Without that connection (the database
restarting) a pump polls every `interval_s` until it can listen again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import procrastinate

from engine import commit_hooks
from engine.db import Pool
from engine.journal import Conn
from engine.rows import DbRow
from engine.wakeups import Wakeups, sleep

log = logging.getLogger("payment.timers")

_TAKE_DUE = """
DELETE FROM timers WHERE id IN (
    SELECT id FROM timers WHERE due_at <= now() ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED
) RETURNING task_id::text, kind, due_at
"""
_TAKE_ONE = """
DELETE FROM timers WHERE id = (
    SELECT id FROM timers WHERE due_at <= now() ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED
) RETURNING task_id::text, kind, due_at
"""
# Seconds until the next timer is due (None: no timer at all).
_NEXT_DUE = "SELECT extract(epoch FROM min(due_at) - now())::float AS wait_s FROM timers"
CHANNEL = "payment_timers"
SOON_S = 30.0  # a pump sleeps at most this long; a timer due sooner wakes it


async def schedule(conn: Conn, task_id: str, kind: str, due_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO timers (task_id, kind, due_at) VALUES (%s, %s, %s)", (task_id, kind, due_at)
    )
    if due_at - datetime.now(UTC) < timedelta(seconds=SOON_S):
        # Delivered when the transition commits: the pumps, asleep until the next
        # due timer they knew of, wake up for this one.
        await conn.execute(f"NOTIFY {CHANNEL}")


async def pump_once(
    pool: Pool, app: procrastinate.App, batch: int = 500
) -> tuple[int, float | None]:
    """Hand every due timer (up to `batch`) to procrastinate, in one transaction.
    Returns how many, and the seconds until the next one is due (None: none left)."""
    async with pool.connection() as conn, conn.transaction():
        rows: list[DbRow] = await (await conn.execute(_TAKE_DUE, (batch,))).fetchall()
        if rows:
            jobs = [
                {"task_id": r["task_id"], "kind": r["kind"], "due_at": r["due_at"].isoformat()}
                for r in rows
            ]
            await app.tasks["timer"].configure(connection=conn).batch_defer_async(*jobs)
        next_due = await (await conn.execute(_NEXT_DUE)).fetchone()
    wait_s = next_due["wait_s"] if next_due else None
    return len(rows), wait_s


# Delivers one due timer's event inside the transaction that took the timer.
# (conn, task_id, kind, due_at): the runtime's fire_timer, in the pump's transaction.
Fire = Callable[[Conn, str, str, datetime], Awaitable[None]]


async def fire_due(pool: Pool, fire: Fire, batch: int = 500) -> tuple[int, float | None]:
    """Deliver due timers here, each in the transaction that deletes it: the timer
    and the transition it causes commit together, so it fires exactly once and a
    crash in between loses nothing. No job hand-off (whose NOTIFY procrastinate
    can miss while it fetches: up to a poll interval late). Returns how many,
    and the seconds until the next one is due (None: none left)."""
    fired = 0
    async with pool.connection() as conn:
        while fired < batch:
            with commit_hooks.transaction_scope():  # the steps it asks for run after
                async with conn.transaction():
                    row = await (await conn.execute(_TAKE_ONE)).fetchone()
                    if row is None:
                        break
                    await fire(conn, str(row["task_id"]), row["kind"], row["due_at"])
            fired += 1
        next_due = await (await conn.execute(_NEXT_DUE)).fetchone()
    return fired, next_due["wait_s"] if next_due else None


async def run_pump(
    pool: Pool,
    app: procrastinate.App,
    interval_s: float,
    stop: asyncio.Event,
    batch: int = 500,
    conninfo: str | None = None,
    fire: Fire | None = None,
) -> None:
    """Pump until `stop` is set. Asleep, the pump waits for the next due timer it
    knows of (at most SOON_S), or for a NOTIFY of a timer due sooner. With no
    `conninfo` (or no listening connection for now) it polls every `interval_s`.
    With `fire`, due timers are delivered here (`fire_due`), else as jobs."""
    wakeups = Wakeups(conninfo, CHANNEL) if conninfo else None
    try:
        while not stop.is_set():
            try:
                if fire is not None:
                    moved, wait_s = await fire_due(pool, fire, batch)
                else:
                    moved, wait_s = await pump_once(pool, app, batch)
            except Exception:  # the database may blip; a timer is only ever late, never lost
                log.exception("timer pump failed; retrying")
                moved, wait_s = 0, None
            if moved >= batch:
                continue  # more are due: go again at once
            # a due timer another pump holds right now (SKIP LOCKED) is not worth a busy loop
            listening_s = SOON_S if wait_s is None else min(max(wait_s, 0.05), SOON_S)
            await sleep(stop, wakeups, interval_s, listening_s)
    finally:
        if wakeups is not None:
            await wakeups.close()
