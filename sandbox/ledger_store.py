"""Ledger state in PostgreSQL (schema `sandbox_ledger`).

Each public coroutine runs as one transaction. Concurrency safety comes from
row locks: a freeze or rollback first tries to INSERT the hold row, so a racing
call on the same key blocks on the unique index until the first transaction
ends and then sees its outcome; everything else reads the hold with
`SELECT ... FOR UPDATE` and locks the balance row before moving money. The
records it keeps, and its errors, are in sandbox/ledger_model.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from sandbox.ledger_model import FreezeRequest, Hold, LedgerError, Row, iso
from workflows.money import format_minor

# Column lists are composed with psycopg.sql, never string formatting.
_HOLD_COLS = sql.SQL(
    "key, provider, currency, amount_minor, status, request_hash, created_at, updated_at, order_id"
)
_SELECT_HOLD = sql.SQL("SELECT {} FROM sandbox_ledger.holds WHERE key = %s").format(_HOLD_COLS)
_SELECT_HOLD_FOR_UPDATE = sql.SQL(
    "SELECT {} FROM sandbox_ledger.holds WHERE key = %s FOR UPDATE"
).format(_HOLD_COLS)
_SELECT_HOLDS = sql.SQL("SELECT {} FROM sandbox_ledger.holds ORDER BY created_at, key").format(
    _HOLD_COLS
)
# A page of the listing: the keys after `after` in byte order (COLLATE "C", so the
# order is the same in every database, and a client can reason about key ranges).
_SELECT_PAGE = sql.SQL(
    'SELECT {} FROM sandbox_ledger.holds WHERE key COLLATE "C" > %s'
    ' ORDER BY key COLLATE "C" LIMIT %s'
).format(_HOLD_COLS)
_INSERT_HOLD = sql.SQL(
    "INSERT INTO sandbox_ledger.holds"
    " (key, provider, currency, amount_minor, status, request_hash, order_id)"
    " VALUES (%s, %s, %s, %s, 'frozen', %s, %s) ON CONFLICT (key) DO NOTHING RETURNING {}"
).format(_HOLD_COLS)
_INSERT_TOMBSTONE = sql.SQL(
    "INSERT INTO sandbox_ledger.holds (key, status) VALUES (%s, 'released')"
    " ON CONFLICT (key) DO NOTHING RETURNING {}"
).format(_HOLD_COLS)
_SET_STATUS = sql.SQL(
    "UPDATE sandbox_ledger.holds SET status = %s, updated_at = clock_timestamp()"
    " WHERE key = %s RETURNING {}"
).format(_HOLD_COLS)
# Two-int advisory lock namespace: serialises concurrent schema creation only.
_SCHEMA_LOCK = (0x5A4D, 1)
# A hold row can vanish between our INSERT conflict and SELECT only through an
# admin reset; retrying that short window a few times is enough.
_RACE_RETRIES = 3


async def apply_schema(pool: AsyncConnectionPool) -> None:
    sql = resources.files("sandbox").joinpath("ledger.sql").read_text()
    async with pool.connection() as conn, conn.transaction():
        # CREATE ... IF NOT EXISTS still races between two starting sandboxes.
        await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _SCHEMA_LOCK)
        await conn.execute(sql.encode())


async def seed_balances(pool: AsyncConnectionPool, balances: list[tuple[str, str, int]]) -> None:
    """Create missing balance rows; existing ones keep their state across restarts."""
    async with pool.connection() as conn, conn.transaction():
        for provider, currency, minor in balances:
            await conn.execute(
                "INSERT INTO sandbox_ledger.balances (provider, currency, available_minor)"
                " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (provider, currency, minor),
            )


async def freeze(pool: AsyncConnectionPool, key: str, req: FreezeRequest) -> tuple[Hold, bool]:
    """The hold, and whether it was there before this call (a replay)."""
    for _ in range(_RACE_RETRIES):
        async with pool.connection() as conn, conn.transaction():
            created = await _insert_hold(conn, key, req)
            if created is not None:
                await _move(conn, req.provider, req.currency, req.amount_minor, "freeze")
                await _record(conn, key, "freeze")
                return created, False
            hold = await _select_for_update(conn, key)
            if hold is not None:
                return _freeze_replay(hold, req), True
    raise LedgerError(503, "retry", "hold changed concurrently; retry")


def _freeze_replay(hold: Hold, req: FreezeRequest) -> Hold:
    if hold.amount_minor is None:
        raise LedgerError(409, "hold_released", "the key was rolled back before any freeze")
    if hold.request_hash != req.digest():
        raise LedgerError(409, "idempotency_conflict", "the key was frozen with another body")
    if hold.status == "released":
        # Not the old 200: a caller replaying after it lost its own record (a lost
        # commit) would take it for money frozen now, and pay out with none held.
        raise LedgerError(409, "hold_released", "the hold was rolled back")
    return hold


async def commit(pool: AsyncConnectionPool, key: str) -> Hold:
    async with pool.connection() as conn, conn.transaction():
        hold = await _select_for_update(conn, key)
        if hold is None:
            raise LedgerError(404, "hold_not_found", "no hold for this key")
        if hold.status == "released":
            raise LedgerError(409, "hold_released", "the hold was rolled back")
        if hold.status == "committed":
            return hold
        await _move(conn, *_money(hold), "commit")
        await _record(conn, key, "commit")
        return await _set_status(conn, key, "committed")


async def rollback(pool: AsyncConnectionPool, key: str) -> Hold:
    for _ in range(_RACE_RETRIES):
        async with pool.connection() as conn, conn.transaction():
            tombstone = await _insert_tombstone(conn, key)
            if tombstone is not None:
                await _record(conn, key, "void")
                return tombstone
            hold = await _select_for_update(conn, key)
            if hold is None:
                continue
            if hold.status == "committed":
                raise LedgerError(409, "hold_committed", "the hold was already committed")
            if hold.status == "released":
                return hold
            await _move(conn, *_money(hold), "rollback")
            await _record(conn, key, "rollback")
            return await _set_status(conn, key, "released")
    raise LedgerError(503, "retry", "hold changed concurrently; retry")


async def get_hold(pool: AsyncConnectionPool, key: str) -> Hold | None:
    async with pool.connection() as conn:
        cur = await conn.execute(_SELECT_HOLD, (key,))
        row = await cur.fetchone()
    return Hold.from_row(row) if row is not None else None


async def list_holds(pool: AsyncConnectionPool) -> list[Hold]:
    async with pool.connection() as conn:
        cur = await conn.execute(_SELECT_HOLDS)
        return [Hold.from_row(row) for row in await cur.fetchall()]


async def list_holds_page(pool: AsyncConnectionPool, after: str, limit: int) -> list[Hold]:
    """Up to `limit` holds whose keys follow `after` (every key follows "")."""
    async with pool.connection() as conn:
        cur = await conn.execute(_SELECT_PAGE, (after, limit))
        return [Hold.from_row(row) for row in await cur.fetchall()]


async def list_balances(pool: AsyncConnectionPool) -> list[dict[str, str]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT provider, currency, available_minor, frozen_minor, debited_minor"
            " FROM sandbox_ledger.balances ORDER BY provider, currency"
        )
        return [_balance_json(row) for row in await cur.fetchall()]


async def set_available(
    pool: AsyncConnectionPool, provider: str, currency: str, minor: int
) -> dict[str, str]:
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "INSERT INTO sandbox_ledger.balances (provider, currency, available_minor)"
            " VALUES (%s, %s, %s) ON CONFLICT (provider, currency)"
            " DO UPDATE SET available_minor = EXCLUDED.available_minor"
            " RETURNING provider, currency, available_minor, frozen_minor, debited_minor",
            (provider, currency, minor),
        )
        row = await cur.fetchone()
    assert row is not None
    return _balance_json(row)


async def list_ops(pool: AsyncConnectionPool) -> list[dict[str, str]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT key, op, at FROM sandbox_ledger.ops ORDER BY id")
        return [{"key": k, "op": op, "at": iso(at)} for k, op, at in await cur.fetchall()]


async def reset(pool: AsyncConnectionPool, balances: list[tuple[str, str, int]]) -> None:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "TRUNCATE sandbox_ledger.holds, sandbox_ledger.ops, sandbox_ledger.balances"
            " RESTART IDENTITY"
        )
    await seed_balances(pool, balances)


def _balance_json(row: Row) -> dict[str, str]:
    provider, currency, available, frozen, debited = row
    return {
        "provider": provider,
        "currency": currency,
        "available": format_minor(available, currency),
        "frozen": format_minor(frozen, currency),
        "debited": format_minor(debited, currency),
    }


def _money(hold: Hold) -> tuple[str, str, int]:
    if hold.provider is None or hold.currency is None or hold.amount_minor is None:
        raise LedgerError(500, "corrupt_hold", "a live hold without amount")
    return hold.provider, hold.currency, hold.amount_minor


async def _insert_hold(conn: AsyncConnection[Any], key: str, req: FreezeRequest) -> Hold | None:
    cur = await conn.execute(
        _INSERT_HOLD,
        (key, req.provider, req.currency, req.amount_minor, req.digest(), req.order_id),
    )
    row = await cur.fetchone()
    return Hold.from_row(row) if row is not None else None


async def _insert_tombstone(conn: AsyncConnection[Any], key: str) -> Hold | None:
    cur = await conn.execute(_INSERT_TOMBSTONE, (key,))
    row = await cur.fetchone()
    return Hold.from_row(row) if row is not None else None


async def _select_for_update(conn: AsyncConnection[Any], key: str) -> Hold | None:
    cur = await conn.execute(_SELECT_HOLD_FOR_UPDATE, (key,))
    row = await cur.fetchone()
    return Hold.from_row(row) if row is not None else None


async def _set_status(conn: AsyncConnection[Any], key: str, status: str) -> Hold:
    cur = await conn.execute(_SET_STATUS, (status, key))
    row = await cur.fetchone()
    assert row is not None  # the row is locked by this transaction
    return Hold.from_row(row)


# op -> (column money leaves, column money enters)
_MOVES: Mapping[str, tuple[str, str]] = {
    "freeze": ("available_minor", "frozen_minor"),
    "commit": ("frozen_minor", "debited_minor"),
    "rollback": ("frozen_minor", "available_minor"),
}


async def _move(
    conn: AsyncConnection[Any], provider: str, currency: str, minor: int, op: str
) -> None:
    """Move `minor` between two balance columns, refusing to go negative."""
    source, target = _MOVES[op]
    src, dst = sql.Identifier(source), sql.Identifier(target)
    lock = sql.SQL(
        "SELECT {} FROM sandbox_ledger.balances WHERE provider = %s AND currency = %s FOR UPDATE"
    ).format(src)
    cur = await conn.execute(lock, (provider, currency))
    row = await cur.fetchone()
    if row is None or row[0] < minor:
        if op == "freeze":
            raise LedgerError(422, "insufficient_balance", "available balance is too low")
        raise LedgerError(500, "ledger_inconsistent", f"{source} is lower than the hold")
    update = sql.SQL(
        "UPDATE sandbox_ledger.balances SET {src} = {src} - %s, {dst} = {dst} + %s"
        " WHERE provider = %s AND currency = %s"
    ).format(src=src, dst=dst)
    await conn.execute(
        update,
        (minor, minor, provider, currency),
    )


async def _record(conn: AsyncConnection[Any], key: str, op: str) -> None:
    await conn.execute("INSERT INTO sandbox_ledger.ops (key, op) VALUES (%s, %s)", (key, op))
