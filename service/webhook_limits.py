"""Each provider's webhook ingest limit: a token bucket in `webhook_limits`, shared
by every API process, leased out a few tokens at a time.

It is taken after the signature is verified and before anything is stored: a
flood of forged webhooks costs an HMAC each but cannot spend a provider's
tokens and shut its real webhooks out.

Why leases: with one statement per webhook, every webhook of a provider updated
the same row, so at 500 webhooks/s each waited for the one before it to commit,
and one backend descheduled while holding the row made all of them wait (the
bucket's statement cost more than storing the webhook: 0.16 against 0.06 ms,
longest 45-58 ms; without it the flood's median answer was 3 ms instead of 7-21,
bench/throughput.py's webhooks on this 2-core VM). Now a process takes up to
LEASE_S of the provider's rate in one statement and spends it itself: at the
default 1,000/s that is 20 tokens, one statement per 20 webhooks.

What a lease changes, and what it does not:
- The shared bucket is debited before a leased token is spent, so all processes
  together never admit more than the bucket allows. A token a process leased is
  spent later than the bucket debited it, by at most LEASE_TTL_S; one not spent
  by then is dropped (the bucket refills at its rate; those are never admitted).
- A process that finds its lease empty takes another; one that finds the bucket
  empty answers 429. With several processes, one may answer 429 while another
  still holds up to a lease's tokens: the limit is shared to within a lease per
  process.
- A small limit leases one token at a time (LEASE_S of 1/s is under one): the
  bucket then behaves exactly as a statement per webhook did.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.db import NO_FLUSH, Pool
from service.models import BadRequest

LEASE_S = 0.02  # of the provider's rate, per lease: 20 tokens at 1,000/s
LEASE_TTL_S = 1.0  # a lease's tokens not spent by then are dropped

# The bucket's tokens now: what it held, refilled at the rate since, at most a burst;
# and what a lease takes of them: the lease, or the whole tokens left if fewer.
_FILLED = """least(%(burst)s::float8, w.tokens + %(rate)s
                   * greatest(extract(epoch FROM now() - w.refilled_at)::float8, 0))"""
_LEASED = f"least(%(want)s::float8, floor({_FILLED}))"
# Inserted full (less this lease) on first use; afterwards refilled and spent only
# when a whole token is there. No row back: the bucket was empty, and it was left as
# it was. Concurrency: the upsert locks the provider's row, so leases are taken one
# after another, each from what the one before left. Committed without waiting for
# the WAL flush (NO_FLUSH): a crash may forget its last milliseconds of leases,
# which lets a few more in.
_LEASE = f"""
WITH quick AS ({NO_FLUSH})
INSERT INTO webhook_limits AS w (provider, tokens, refilled_at, leased)
SELECT %(provider)s, %(burst)s::float8 - least(%(want)s, %(burst)s), now(),
       least(%(want)s, %(burst)s) FROM quick
ON CONFLICT (provider) DO UPDATE
SET leased = {_LEASED}, tokens = {_FILLED} - {_LEASED}, refilled_at = greatest(w.refilled_at, now())
WHERE {_FILLED} >= 1
RETURNING leased
"""  # noqa: S608 - constants


@dataclass
class _Lease:
    tokens: int
    expires_at: float  # on the process's monotonic clock


class WebhookTokens:
    """This process's leases of each provider's bucket."""

    def __init__(
        self,
        pool: Pool,
        rate_per_s: float,
        burst: int,
        lease_s: float = LEASE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool, self.rate, self.burst, self.clock = pool, rate_per_s, burst, clock
        self.lease_size = max(1, min(burst, int(rate_per_s * lease_s)))
        self._leases: dict[str, _Lease] = {}
        self._taking: dict[str, asyncio.Lock] = {}  # one lease statement at a time

    async def take(self, provider: str) -> None:
        """One token of `provider`'s, or a 429 (nothing is stored)."""
        if self._spend(provider):
            return
        async with self._taking.setdefault(provider, asyncio.Lock()):
            if self._spend(provider):  # the lease another request waited for
                return
            leased = await self._lease(provider)
            if leased == 0:
                # An empty bucket has a token again within 1 / rate seconds.
                wait = max(1, math.ceil(1.0 / self.rate))
                raise BadRequest(
                    429, "rate_limited", "too many webhooks; retry later", retry_after_s=wait
                )
            self._leases[provider] = _Lease(leased - 1, self.clock() + LEASE_TTL_S)

    def _spend(self, provider: str) -> bool:
        lease = self._leases.get(provider)
        if lease is None or lease.tokens < 1 or self.clock() >= lease.expires_at:
            return False
        lease.tokens -= 1
        return True

    async def _lease(self, provider: str) -> int:
        params = {
            "provider": provider,
            "rate": self.rate,
            "burst": self.burst,
            "want": self.lease_size,
        }
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_LEASE, params)).fetchone()
        return 0 if row is None else int(row["leased"])
