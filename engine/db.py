"""Connections and schema: psycopg 3 pools, idempotent schema application."""

from __future__ import annotations

import hashlib
import logging
import select
import time
from pathlib import Path

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("payment.db")
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema.sql"
_SCHEMA_LOCK = 7_303_001  # advisory lock id: N processes may start at once


Pool = AsyncConnectionPool[AsyncConnection[DictRow]]


async def open_pool(
    conninfo: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    acquire_timeout_s: float = 30.0,
    check: bool = False,
) -> Pool:
    """`check` tests each connection as it is handed out, so that after a database
    restart the first request gets a fresh connection, not a dead one. The test
    costs no round trip unless the idle connection has something to read (see
    `check_idle_connection`)."""
    pool: Pool = AsyncConnectionPool(
        conninfo,
        connection_class=AsyncConnection[DictRow],
        min_size=min_size,
        max_size=max_size,
        timeout=acquire_timeout_s,
        kwargs={"row_factory": dict_row, "autocommit": True},
        check=check_idle_connection if check else None,
        open=False,
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def check_idle_connection(conn: AsyncConnection[DictRow]) -> None:
    """psycopg_pool's check (an empty query) only when the idle connection's socket
    is readable. A server that restarts or ends the session says so and closes
    the socket, which makes it readable; a healthy idle connection has nothing to
    read. The plain check on every hand-out was a round trip and a server-side
    transaction per request: a third of the API's commits."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)


def apply_schema(conninfo: str) -> None:
    """Apply procrastinate's schema (once) and ours, serialised across processes.

    Ours is applied only when schema.sql changed since it was last applied (its
    hash is recorded): re-running its `CREATE INDEX IF NOT EXISTS` takes SHARE
    locks on the withdrawal tables, in an order opposite to a transition's, so a
    worker starting next to live withdrawals deadlocked them.
    """
    import procrastinate

    ours = SCHEMA_FILE.read_text()
    digest = hashlib.sha256(ours.encode()).hexdigest()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            exists = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                conn.execute(procrastinate.schema.SchemaManager.get_schema())
            conn.execute(_APPLIED_TABLE)
            if conn.execute(_APPLIED, (digest,)).fetchone() is None:
                with conn.transaction():
                    conn.execute(ours)
                    conn.execute(_RECORD, (digest,))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))


def apply_schema_when_reachable(conninfo: str, timeout_s: float = 300.0) -> None:
    """apply_schema, waiting (with backoff) for a database that is restarting: a
    process started during an outage, by a supervisor say, waits instead of exiting."""
    deadline, backoff = time.monotonic() + timeout_s, 0.5
    while True:
        try:
            apply_schema(conninfo)
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() + backoff > deadline:
                raise
            log.warning("database unreachable (%s); retrying in %.1fs", type(exc).__name__, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


_APPLIED_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_applied"
    " (sha256 text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
)
_APPLIED = "SELECT 1 FROM schema_applied WHERE sha256 = %s"
_RECORD = "INSERT INTO schema_applied (sha256) VALUES (%s) ON CONFLICT DO NOTHING"
