"""What every pooled session is set up with (engine/db.py)."""

from __future__ import annotations

from engine.db import open_pool


async def test_a_pooled_session_plans_without_jit(migrated_url: str) -> None:
    """The server's default is on (this machine's and PostgreSQL's): a pooled session
    turns it off, also after the pool replaces a connection."""
    pool = await open_pool(migrated_url, min_size=1, max_size=1)
    try:
        for _ in range(2):
            async with pool.connection() as conn:
                row = await (await conn.execute("SHOW jit")).fetchone()
                assert row == {"jit": "off"}
                await conn.close()  # the next hand-out is a new connection
    finally:
        await pool.close()
