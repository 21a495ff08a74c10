"""The live configuration's rows (migrations/0009_live_config.sql): each SQL
statement beside its one use.

A document's versions are rows; the highest is in force. Writers never UPDATE: a
change INSERTs `version + 1` of the version it was made from, so two concurrent
changes of one document cannot both land: the second hits the primary key and is
refused as a conflict (its maker re-reads and decides again). Nothing else is
locked, and readers never wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from engine.journal import Conn

Document = Literal["rollout", "providers"]
DOCUMENTS: tuple[Document, ...] = ("rollout", "providers")


@dataclass(frozen=True)
class Version:
    """One version of one document, as stored (credentials included: never print)."""

    name: Document
    version: int
    body: dict[str, Any]
    changed_by: str
    reason: str
    changed_at: datetime


class VersionConflict(Exception):
    """Another change of the document landed first."""


# The newest version of each document, for the periodic re-read: an index-only
# probe of the primary key per document, cheap enough for every process every
# second or two.
_LATEST = """
SELECT name, max(version) AS version FROM live_config WHERE scope = %s GROUP BY name
"""


async def latest_versions(conn: Conn, scope: str) -> dict[str, int]:
    rows = await (await conn.execute(_LATEST, (scope,))).fetchall()
    return {str(r["name"]): int(r["version"]) for r in rows}


_SINCE = """
SELECT name, version, body, changed_by, reason, changed_at FROM live_config
WHERE scope = %s AND name = %s AND version > %s ORDER BY version
"""


async def versions_since(conn: Conn, scope: str, name: Document, after: int) -> list[Version]:
    """Every version newer than `after` (0: the whole history), oldest first."""
    rows = await (await conn.execute(_SINCE, (scope, name, after))).fetchall()
    return [Version(**r) for r in rows]


_HISTORY = """
SELECT name, version, body, changed_by, reason, changed_at FROM live_config
WHERE scope = %s AND name = %s ORDER BY version DESC LIMIT %s
"""


async def history(conn: Conn, scope: str, name: Document, limit: int) -> list[Version]:
    """The newest `limit` versions, newest first."""
    rows = await (await conn.execute(_HISTORY, (scope, name, limit))).fetchall()
    return [Version(**r) for r in rows]


_APPEND = """
INSERT INTO live_config (scope, name, version, body, changed_by, reason)
VALUES (%s, %s, %s, %s, %s, %s)
"""


async def append(
    conn: Conn, scope: str, name: Document, made_from: int, body: dict[str, Any], who: str, why: str
) -> int:
    """Store `body` as the version after `made_from`; VersionConflict when another
    change took that number. The notification goes out at commit (the trigger)."""
    try:
        async with conn.transaction():  # a savepoint: a conflict leaves the caller's open
            await conn.execute(_APPEND, (scope, name, made_from + 1, Jsonb(body), who, why))
    except psycopg.errors.UniqueViolation:
        raise VersionConflict(f"{name} changed meanwhile (version {made_from} is stale)") from None
    return made_from + 1


# Seeding: version 1, from the files, only where the scope has no version at all.
# Two processes starting at once both try; the primary key lets exactly one in.
_SEED = """
INSERT INTO live_config (scope, name, version, body, changed_by, reason)
VALUES (%s, %s, 1, %s, %s, %s) ON CONFLICT DO NOTHING
"""


async def seed(conn: Conn, scope: str, name: Document, body: dict[str, Any], source: str) -> bool:
    """True when this call stored the first version."""
    cur = await conn.execute(_SEED, (scope, name, Jsonb(body), f"seed:{source}", "seeded"))
    return cur.rowcount == 1
