"""Sleep until there is work: a NOTIFY on a channel, a deadline, or a stop.

Loops that would otherwise poll the database (the timer pump, the outbox relay)
hold one LISTEN connection each and sleep on it. Without that connection (the
database restarting) they fall back to polling until they can listen again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg


class Wakeups:
    """A LISTEN connection for `channel`, opened again (later) when it breaks."""

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._retry_at = 0.0

    async def ready(self) -> bool:
        if self._conn is not None and not self._conn.closed:
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            return False
        try:
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            await self._conn.execute(f"LISTEN {self._channel}")
            return True
        except psycopg.Error:
            self._conn, self._retry_at = None, loop.time() + 2.0
            return False

    async def next(self) -> None:
        """Return at the next notification; a broken connection returns at once."""
        assert self._conn is not None
        try:
            async for _ in self._conn.notifies(stop_after=1):
                return
        except psycopg.Error:
            await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None


async def sleep(
    stop: asyncio.Event, wakeups: Wakeups | None, poll_s: float, listening_s: float
) -> bool:
    """Sleep until `stop`, a notification, or the timeout: `listening_s` while a
    LISTEN connection is up, else `poll_s`. Returns whether a notification woke us."""
    listening = wakeups is not None and await wakeups.ready()
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if listening and wakeups is not None:
        waiters.append(asyncio.ensure_future(wakeups.next()))
    try:
        done, _ = await asyncio.wait(
            waiters,
            timeout=listening_s if listening else poll_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return len(waiters) > 1 and waiters[1] in done
