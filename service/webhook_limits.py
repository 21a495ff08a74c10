"""Each provider's webhook ingest limit: a token bucket in `webhook_limits`, shared
by every API process, one statement per webhook.

It is taken after the signature is verified and before anything is stored: a
flood of forged webhooks costs an HMAC each but cannot spend a provider's
tokens and shut its real webhooks out.
"""

from __future__ import annotations

import math

from service.api_keys import NO_FLUSH
from service.models import BadRequest
from service.wiring import Services

# Inserted full (less this webhook's token) on first use; afterwards refilled and
# spent only when a token is there. No row back: the bucket was empty, and it was
# left as it was. Committed without waiting for the WAL flush (service/api_keys.py, NO_FLUSH).
_TAKE = f"""
WITH quick AS ({NO_FLUSH})
INSERT INTO webhook_limits AS w (provider, tokens, refilled_at)
SELECT %(provider)s, %(burst)s::float8 - 1, now() FROM quick
ON CONFLICT (provider) DO UPDATE
SET tokens = least(%(burst)s::float8, w.tokens + %(rate)s
                   * greatest(extract(epoch FROM now() - w.refilled_at)::float8, 0)) - 1,
    refilled_at = greatest(w.refilled_at, now())
WHERE least(%(burst)s::float8, w.tokens + %(rate)s
            * greatest(extract(epoch FROM now() - w.refilled_at)::float8, 0)) >= 1
RETURNING tokens
"""  # noqa: S608 - a constant


async def take_webhook_token(svc: Services, provider: str) -> None:
    """A 429 when `provider`'s webhooks are over their rate: nothing is stored."""
    rate, burst = svc.settings.webhook_rate_per_s, svc.settings.webhook_burst
    params = {"provider": provider, "rate": rate, "burst": burst}
    async with svc.pool.connection() as conn:
        taken = await (await conn.execute(_TAKE, params)).fetchone()
    if taken is None:
        # An empty bucket has a token again within 1 / rate seconds.
        wait = max(1, math.ceil(1.0 / rate))
        raise BadRequest(429, "rate_limited", "too many webhooks; retry later", retry_after_s=wait)
