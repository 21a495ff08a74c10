"""Who may call cascade-core's API: API keys (scopes, merchants, limits) and the
bootstrap tokens of API_TOKENS.

A key is `psk_<prefix>_<secret>`. The prefix is a public id (lists, logs, audit);
the secret is 32 random bytes. Only the SHA-256 of the whole key is stored, and a
request's key is found by that digest (a unique index). No slow KDF: a KDF slows
the guessing of passwords, and 256 random bits cannot be guessed; a stolen table
of digests gives no key back. Because the lookup is by digest, how long it takes
says something about the digest of the caller's guess only, never about a stored
key. Bootstrap tokens are compared in constant time, every one of them.

Each request with a key costs one statement before its handler: it checks that
the key is neither revoked nor expired, that it holds the route's scope, and takes
a token from the key's bucket and a slot in flight, all on the key's row, locked
for that statement. Every API process therefore sees a revocation and a limit at
once (no cache). The slot is given back when the request ends, or when its lease
ends if the process died first.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr
from starlette.requests import Request

from engine import logs
from engine.db import NO_FLUSH
from service.models import BadRequest
from service.wiring import Services

SUBMIT, READ, CANCEL = "withdrawals:submit", "withdrawals:read", "withdrawals:cancel"
SCOPES = (SUBMIT, READ, CANCEL)
BOOTSTRAP_CLIENT = "bootstrap"
_KEY = re.compile(r"^psk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
BUSY_RETRY_S = 1  # a key at its concurrency limit: a request ends soon
log = logging.getLogger("payment.api")

# The limits' bookkeeping commits without waiting for the WAL to reach the disk
# (engine/db.py, NO_FLUSH): a crash may forget its last milliseconds, which lets a
# few more requests in, or holds a slot until its lease ends. That wait was most
# of what a key cost a request (bench/api_limits.py).
# One statement: check the key, decide, spend. `k` locks the key's row, so requests
# with one key serialise here and each sees the bucket and the leases the one
# before it left; `decided` is read twice, so PostgreSQL computes it once.
_ADMIT = f"""
WITH quick AS ({NO_FLUSH}), k AS (
    SELECT id, client, prefix, merchants, %(scope)s = ANY(scopes) AS allowed,
           coalesce(rate_per_s, %(rate)s) AS rate,
           least(coalesce(burst, %(burst)s), coalesce(tokens, burst, %(burst)s)
                 + coalesce(rate_per_s, %(rate)s)
                   * greatest(extract(epoch FROM now() - refilled_at)::float8, 0)) AS filled,
           array(SELECT l FROM unnest(leases) AS l WHERE l > now()) AS live,
           coalesce(max_in_flight, %(in_flight)s) AS cap,
           greatest(refilled_at, now()) AS refilled
    FROM api_keys
    WHERE hash = %(hash)s AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
    FOR UPDATE
), decided AS (
    SELECT k.*, allowed AND filled >= 1 AND cardinality(live) < cap AS admitted,
           cardinality(live) >= cap AS busy, now() + make_interval(secs => %(lease_s)s) AS lease
    FROM k
), kept AS (
    UPDATE api_keys a
    SET tokens = d.filled - CASE WHEN d.admitted THEN 1 ELSE 0 END, refilled_at = d.refilled,
        leases = CASE WHEN d.admitted THEN d.live || d.lease ELSE d.live END
    FROM decided d WHERE a.id = d.id
)
SELECT id::text, client, prefix, merchants, allowed, admitted, busy, filled, rate, lease
FROM decided CROSS JOIN quick
"""  # noqa: S608 - a constant
# Removes one occurrence of the request's lease (a twin, if any, is as good).
_RELEASE = f"""
WITH quick AS ({NO_FLUSH})
UPDATE api_keys
SET leases = leases[:array_position(leases, %(lease)s) - 1]
             || leases[array_position(leases, %(lease)s) + 1:]
FROM quick WHERE id = %(id)s AND %(lease)s = ANY(leases)
"""  # noqa: S608 - a constant


@dataclass(frozen=True)
class Caller:
    """Who called: a key's client (with its prefix), or a bootstrap token."""

    client: str
    key_id: str | None = None  # None: a bootstrap token
    prefix: str | None = None
    merchants: frozenset[str] | None = None  # None: every merchant

    @property
    def actor(self) -> str:
        """The audit trail's actor for what the caller does."""
        if self.key_id is None:
            return "cascade-core"
        return f"api:{self.client} (key {self.prefix})"

    def require_merchant(self, merchant_id: str) -> None:
        if self.merchants is not None and merchant_id not in self.merchants:
            raise BadRequest(403, "forbidden", "this key is not for that merchant")


BOOTSTRAP = Caller(BOOTSTRAP_CLIENT)


@dataclass(frozen=True)
class Admission:
    caller: Caller
    lease: datetime


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def mint() -> tuple[str, str]:
    """A new key and its prefix."""
    prefix = secrets.token_hex(6)
    return f"psk_{prefix}_{secrets.token_urlsafe(32)}", prefix


def offered_token(request: Request) -> str:
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not offered:
        raise BadRequest(401, "unauthorized", "missing or invalid bearer token")
    return offered


def is_bootstrap(offered: str, tokens: Sequence[SecretStr]) -> bool:
    matched = False
    for token in tokens:  # compare against every token: timing leaks nothing
        matched |= hmac.compare_digest(offered.encode(), token.get_secret_value().encode())
    return matched


@contextlib.asynccontextmanager
async def authorised(svc: Services, request: Request, scope: str) -> AsyncIterator[Caller]:
    """The caller, for as long as the request runs: 401 for no valid key, 403 for a
    key without `scope`, 429 over the key's limits, each before anything changes."""
    offered = offered_token(request)
    if is_bootstrap(offered, svc.settings.api_tokens):
        yield BOOTSTRAP
        return
    admission = await _admit(svc, offered, scope)
    logs.bind(api_client=admission.caller.client, api_key=admission.caller.prefix)
    try:
        yield admission.caller
    finally:
        async with svc.pool.connection() as conn:
            await conn.execute(_RELEASE, {"id": admission.caller.key_id, "lease": admission.lease})


async def _admit(svc: Services, offered: str, scope: str) -> Admission:
    if not _KEY.match(offered):
        raise BadRequest(401, "unauthorized", "missing or invalid bearer token")
    settings = svc.settings
    params = {
        "hash": digest(offered),
        "scope": scope,
        "rate": settings.api_key_rate_per_s,
        "burst": settings.api_key_burst,
        "in_flight": settings.api_key_max_in_flight,
        "lease_s": settings.api_key_lease_s,
    }
    async with svc.pool.connection() as conn:
        row = await (await conn.execute(_ADMIT, params)).fetchone()
    if row is None:
        raise BadRequest(401, "unauthorized", "unknown, revoked or expired API key")
    if not row["allowed"]:
        raise BadRequest(403, "forbidden", f"this key lacks the scope {scope}")
    if not row["admitted"]:
        log.info("API key %s over its limit", row["prefix"])
        raise BadRequest(429, "rate_limited", "over this key's limit", retry_after_s=_wait(row))
    merchants = frozenset(row["merchants"]) if row["merchants"] is not None else None
    caller = Caller(row["client"], row["id"], row["prefix"], merchants)
    return Admission(caller, row["lease"])


def _wait(row: dict[str, float | bool]) -> int:
    """Whole seconds until the refused request would be let in."""
    if row["busy"]:
        return BUSY_RETRY_S
    return max(1, math.ceil((1.0 - float(row["filled"])) / float(row["rate"])))
