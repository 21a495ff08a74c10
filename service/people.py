"""What the service keeps about people: the roles it grants (role_grants), who
signed in how (people_events), and the one break-glass admin.

Break-glass is for when the issuer is down: one local name and the SHA-256 of its
password (BREAK_GLASS_NAME, BREAK_GLASS_PASSWORD_SHA256), off unless both are set.
Each of its sign-ins is a people_events row and an outbox event in one
transaction, and counts in `break_glass_sign_ins_total`, which pages
(deploy/prometheus/alerts.yml).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from prometheus_client import Counter
from psycopg.types.json import Jsonb

from engine.journal import Conn
from service.principals import ADMIN, Principal
from service.settings import Settings

BREAK_GLASS_ISSUER = "break-glass"  # the Principal's issuer: no OpenID issuer vouched
BREAK_GLASS_SIGN_INS = Counter(
    "break_glass_sign_ins_total", "Sign-ins as the local break-glass admin (each one pages)"
)
# The stream takes `order.>` only (activities/outbox_relay.py): another subject
# would stop the relay, so people's events live under it.
BREAK_GLASS_SUBJECT = "order.people.break_glass_sign_in"

_GRANTED = """
SELECT DISTINCT role FROM role_grants WHERE issuer = %(issuer)s
  AND (subject = %(subject)s OR (%(email)s::text IS NOT NULL AND lower(email) = lower(%(email)s)))
"""
_EVENT = "INSERT INTO people_events (kind, actor, detail) VALUES (%s, %s, %s)"
_OUTBOX = "INSERT INTO outbox (subject, payload) VALUES (%s, %s)"


async def granted_roles(conn: Conn, issuer: str, subject: str, email: str | None) -> frozenset[str]:
    """The roles the service grants this person (by subject, or by a verified email)."""
    params = {"issuer": issuer, "subject": subject, "email": email}
    rows = await (await conn.execute(_GRANTED, params)).fetchall()
    return frozenset(str(row["role"]) for row in rows)


def break_glass_enabled(settings: Settings) -> bool:
    return bool(settings.break_glass_name and settings.break_glass_password_sha256)


def break_glass_admin(settings: Settings, name: str, password: str) -> Principal | None:
    """The break-glass admin, when it is enabled and this is its name and password."""
    if not break_glass_enabled(settings):
        return None
    assert settings.break_glass_name and settings.break_glass_password_sha256
    offered = hashlib.sha256(password.encode()).hexdigest()
    wanted = settings.break_glass_password_sha256.get_secret_value().strip().lower()
    # both compared, always: how long it takes says nothing about which was wrong
    name_ok = hmac.compare_digest(name.encode(), settings.break_glass_name.encode())
    if not (hmac.compare_digest(offered, wanted) and name_ok):
        return None
    name = settings.break_glass_name
    return Principal(BREAK_GLASS_ISSUER, name, None, frozenset({ADMIN}), via="break_glass")


async def record_sign_in(conn: Conn, principal: Principal, detail: dict[str, Any]) -> None:
    """A console sign-in, audited; break-glass's also announced, and counted once committed."""
    kind = "break_glass_sign_in" if principal.via == "break_glass" else "sign_in"
    body = {"kind": kind, "issuer": principal.issuer, "subject": principal.subject, **detail}
    async with conn.transaction():
        await conn.execute(_EVENT, (kind, principal.actor, Jsonb(body)))
        if principal.via == "break_glass":
            await conn.execute(_OUTBOX, (BREAK_GLASS_SUBJECT, Jsonb(body)))
    if principal.via == "break_glass":  # committed: counted (and paged on)
        BREAK_GLASS_SIGN_INS.inc()
