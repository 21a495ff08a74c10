"""A lost-commit counter for the HA cluster (sandbox/ha_cluster.py).

A small async writer commits numbered rows into its own table
`ha_probe(n bigint primary key, at timestamptz)` every ~20 ms through the
multi-host URL, reconnecting with backoff after a failover. It remembers which n
were acknowledged (the commit returned). Once the cluster has settled,
`lost()` is `acknowledged - present`. A commit that got no answer (the connection
broke) is `uncertain`: it may or may not be there, and counts as neither.
For each kill announced with `killed(at)`, `failovers` gets the seconds from the
kill to the first commit that succeeded on a connection opened after it.

    probe = HaProbe(cluster.url); probe.start_thread()
    probe.killed(cluster.kill_primary()); ...; probe.stop(); cluster.wait_healthy()
    assert not probe.lost()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import psycopg


class HaProbe:
    def __init__(self, url: str, *, interval_s: float = 0.02, table: str = "ha_probe") -> None:
        self.url, self.interval_s, self.table = url, interval_s, table
        self.acknowledged: set[int] = set()
        self.uncertain: set[int] = set()
        self.failovers: list[float] = []  # seconds from a kill to the next successful commit
        self._kills: list[float] = []
        self._running = False
        self._thread: threading.Thread | None = None

    def killed(self, at: float) -> None:
        """Announce a kill at time.monotonic() `at` (what HaCluster.kill_primary returns)."""
        self._kills.append(at)

    async def run(self) -> None:
        """Write until stop(); every failure closes the connection and retries with backoff."""
        self._running, n, backoff = True, 0, 0.05
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        opened_at = 0.0
        while self._running:
            if conn is None:
                try:
                    conn = await self._connect()
                    opened_at, backoff = time.monotonic(), 0.05
                except (psycopg.Error, TimeoutError):
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 0.4)
                    continue
            n += 1
            try:
                query = f"INSERT INTO {self.table} VALUES (%s, now())"  # noqa: S608 - our table
                await asyncio.wait_for(conn.execute(query, (n,)), 5)
            except (psycopg.Error, TimeoutError):
                self.uncertain.add(n)
                await _close(conn)
                conn = None
                continue
            self.acknowledged.add(n)
            if self._kills and opened_at > self._kills[0]:
                self.failovers.append(time.monotonic() - self._kills.pop(0))
            await asyncio.sleep(self.interval_s)
        if conn is not None:
            await _close(conn)

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(self.url, autocommit=True), 10
        )
        if not self.acknowledged and not self.uncertain:  # first connection: a fresh table
            ddl = f"CREATE TABLE IF NOT EXISTS {self.table} (n bigint PRIMARY KEY, at timestamptz)"
            await conn.execute(ddl)
            await conn.execute(f"TRUNCATE {self.table}")
        return conn

    def start_thread(self) -> None:
        """Run the writer on its own event loop in a daemon thread (for threaded callers)."""
        self._running = True
        self._thread = threading.Thread(target=asyncio.run, args=(self.run(),), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=15)

    def lost(self, timeout_s: float = 30.0) -> set[int]:
        """Acknowledged numbers missing from the table (read from the current leader).
        Safe while the writer runs: only what was acknowledged before the read counts."""
        deadline = time.monotonic() + timeout_s
        while True:
            acknowledged = set(self.acknowledged)
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    rows = conn.execute(f"SELECT n FROM {self.table}").fetchall()  # noqa: S608
                return acknowledged - {int(r[0]) for r in rows}
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def summary(self) -> dict[str, object]:
        lost = self.lost()
        return {
            "acknowledged": len(self.acknowledged),
            "uncertain": len(self.uncertain),
            "lost": len(lost),
            "failover_s": [round(s, 2) for s in self.failovers],
        }


async def _close(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    with contextlib.suppress(psycopg.Error, TimeoutError):
        await asyncio.wait_for(conn.close(), 2)
