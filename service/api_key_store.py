"""Creating, listing, rotating and revoking API keys: each change and its audit row
(`api_key_events`, with the actor) in one transaction. The ops API, the console
and the command line all come here, and the API processes read the table on
every request, so a change holds everywhere at once, with no restart.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from psycopg.types.json import Jsonb

from engine.journal import Conn
from service.api_key_models import KeyCreation, KeyRevocation, KeyRotation
from service.api_keys import digest, mint
from service.models import BadRequest

_VIEW = """
id::text, client, prefix, scopes, merchants,
CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
     WHEN expires_at <= now() THEN 'expired' ELSE 'active' END AS state,
created_by, created_at, expires_at, revoked_at, revoked_by, rotated_from::text,
rate_per_s, burst, max_in_flight
"""
_INSERT = f"""
INSERT INTO api_keys (client, prefix, hash, scopes, merchants, created_by, expires_at,
                      rotated_from, rate_per_s, burst, max_in_flight)
VALUES (%(client)s, %(prefix)s, %(hash)s, %(scopes)s, %(merchants)s, %(actor)s,
        now() + %(expires_in)s::interval, %(rotated_from)s, %(rate_per_s)s, %(burst)s,
        %(max_in_flight)s)
RETURNING {_VIEW}
"""  # noqa: S608 - the view is a constant
_LIST = f"SELECT {_VIEW} FROM api_keys ORDER BY created_at DESC, id"  # noqa: S608
_LOCK = f"""
SELECT {_VIEW}, revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AS live
FROM api_keys WHERE id = %s FOR UPDATE
"""  # noqa: S608
_SHORTEN = f"""
UPDATE api_keys SET expires_at = least(coalesce(expires_at, 'infinity'), now() + %s::interval)
WHERE id = %s RETURNING {_VIEW}
"""  # noqa: S608
_REVOKE = f"""
UPDATE api_keys SET revoked_at = now(), revoked_by = %s WHERE id = %s RETURNING {_VIEW}
"""  # noqa: S608
_AUDIT = "INSERT INTO api_key_events (key_id, action, actor, detail) VALUES (%s, %s, %s, %s)"


def _seconds(value: int | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


async def create(
    conn: Conn, spec: KeyCreation, actor: str, rotated_from: str | None = None
) -> tuple[str, dict[str, Any]]:
    """A new key (its value, shown once, and its row), audited as `created`."""
    key, prefix = mint()
    params = {
        **spec.model_dump(include={"client", "scopes", "merchants"}),
        **spec.model_dump(include={"rate_per_s", "burst", "max_in_flight"}),
        "prefix": prefix,
        "hash": digest(key),
        "actor": actor,
        "expires_in": _seconds(spec.expires_in_s),
        "rotated_from": rotated_from,
    }
    async with conn.transaction():
        row = await (await conn.execute(_INSERT, params)).fetchone()
        assert row is not None
        detail = spec.model_dump(exclude_none=True) | {"prefix": prefix}
        await conn.execute(_AUDIT, (row["id"], "created", actor, Jsonb(detail)))
    return key, row


async def list_keys(conn: Conn) -> list[dict[str, Any]]:
    return await (await conn.execute(_LIST)).fetchall()


async def rotate(
    conn: Conn, key_id: str, change: KeyRotation, actor: str, default_grace_s: int
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A new key like `key_id` (its value, its row), and the old key's row, which now
    expires after the grace period (or sooner, if it was to expire sooner)."""
    grace_s = default_grace_s if change.grace_s is None else change.grace_s
    key_id = key_id_of(key_id)
    async with conn.transaction():
        old = await _locked(conn, key_id)
        if not old.pop("live"):
            raise BadRequest(409, "not_allowed", f"the key is {old['state']}: nothing to rotate")
        spec = KeyCreation(
            client=old["client"],
            scopes=old["scopes"],
            merchants=old["merchants"],
            expires_in_s=change.expires_in_s,
            rate_per_s=old["rate_per_s"],
            burst=old["burst"],
            max_in_flight=old["max_in_flight"],
        )
        key, new = await create(conn, spec, actor, rotated_from=key_id)
        shortened = await (await conn.execute(_SHORTEN, (_seconds(grace_s), key_id))).fetchone()
        assert shortened is not None
        detail = {"new_key_id": new["id"], "grace_s": grace_s}
        await conn.execute(_AUDIT, (key_id, "rotated", actor, Jsonb(detail)))
    return key, new, shortened


async def revoke(conn: Conn, key_id: str, change: KeyRevocation, actor: str) -> dict[str, Any]:
    """Revoked from now on, in every API process (they read the row per request)."""
    key_id = key_id_of(key_id)
    async with conn.transaction():
        old = await _locked(conn, key_id)
        if old["state"] == "revoked":
            raise BadRequest(409, "not_allowed", "the key is revoked already")
        row = await (await conn.execute(_REVOKE, (actor, key_id))).fetchone()
        assert row is not None
        await conn.execute(_AUDIT, (key_id, "revoked", actor, Jsonb({"reason": change.reason})))
    return row


def key_id_of(text: str) -> str:
    """A key id as PostgreSQL spells it; anything else names no key (a 404)."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise BadRequest(404, "not_found", "no such API key") from None


async def _locked(conn: Conn, key_id: str) -> dict[str, Any]:
    row = await (await conn.execute(_LOCK, (key_id,))).fetchone()
    if row is None:
        raise BadRequest(404, "not_found", "no such API key")
    return row
