"""Durable timers that keep job pickup cost flat however many are pending.

A timer is a row in `timers` (index on due_at), written in the transition's
transaction. The pump, a small loop inside every worker, moves due rows into
procrastinate as immediate jobs: `DELETE … WHERE id IN (SELECT … WHERE due_at
<= now() ORDER BY due_at LIMIT n FOR UPDATE SKIP LOCKED)` plus the job inserts,
in one transaction. N workers pump concurrently without taking the same row,
and a crash between the delete and the commit loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

import procrastinate

from engine.db import Pool
from engine.journal import Conn

log = logging.getLogger("payment.timers")

_TAKE_DUE = """
DELETE FROM timers WHERE id IN (
    SELECT id FROM timers WHERE due_at <= now() ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED
) RETURNING task_id::text, kind, due_at
"""


async def schedule(conn: Conn, task_id: str, kind: str, due_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO timers (task_id, kind, due_at) VALUES (%s, %s, %s)", (task_id, kind, due_at)
    )


async def pump_once(pool: Pool, app: procrastinate.App, batch: int = 500) -> int:
    """Hand every due timer (up to `batch`) to procrastinate. Returns how many."""
    async with pool.connection() as conn, conn.transaction():
        rows: list[dict[str, Any]] = await (await conn.execute(_TAKE_DUE, (batch,))).fetchall()
        if rows:
            jobs = [
                {"task_id": r["task_id"], "kind": r["kind"], "due_at": r["due_at"].isoformat()}
                for r in rows
            ]
            await app.tasks["timer"].configure(connection=conn).batch_defer_async(*jobs)
    return len(rows)


async def run_pump(
    pool: Pool, app: procrastinate.App, interval_s: float, stop: asyncio.Event, batch: int = 500
) -> None:
    """Pump until `stop` is set. A full batch means more are due: go again at once."""
    while not stop.is_set():
        try:
            moved = await pump_once(pool, app, batch)
        except Exception:  # the database may blip; a timer is only ever late, never lost
            log.exception("timer pump failed; retrying")
            moved = 0
        if moved < batch:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
