"""Connections and schema: psycopg 3 pools, idempotent schema application."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

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
    """`check` tests each connection as it is handed out (one round trip), so that
    after a database restart the first request gets a fresh connection, not a dead one."""
    pool: Pool = AsyncConnectionPool(
        conninfo,
        connection_class=AsyncConnection[DictRow],
        min_size=min_size,
        max_size=max_size,
        timeout=acquire_timeout_s,
        kwargs={"row_factory": dict_row, "autocommit": True},
        check=AsyncConnectionPool.check_connection if check else None,
        open=False,
    )
    await pool.open(wait=True, timeout=30)
    return pool


def apply_schema(conninfo: str) -> None:
    """Apply procrastinate's schema (once) and ours (idempotent), serialised."""
    import procrastinate

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            exists = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                sql = procrastinate.schema.SchemaManager.get_schema()
                conn.execute(sql)
            conn.execute(SCHEMA_FILE.read_text())
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
