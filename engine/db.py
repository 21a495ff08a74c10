"""Connections: psycopg 3 pools. (The schema: engine/migrations.py.)"""

from __future__ import annotations

import select

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

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
