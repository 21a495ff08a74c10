"""The webhook limit's leases (service/webhook_limits.py): API processes share a
provider's bucket in the database and take a few tokens from it at a time.

Each `WebhookTokens` here stands for one API process; the rates are slow (a token
every 5 s) so that what the bucket refills while a test runs is bounded by its time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from engine.db import Pool, open_pool
from service.models import BadRequest
from service.webhook_limits import LEASE_TTL_S, WebhookTokens

RATE, BURST, LEASE_S = 0.2, 30, 50.0  # leases of 10 tokens; a token refilled every 5 s


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[Pool]:
    opened = await open_pool(migrated_url, min_size=1, max_size=4)
    try:
        yield opened
    finally:
        await opened.close()


async def _admitted(tokens: WebhookTokens, provider: str) -> bool:
    try:
        await tokens.take(provider)
    except BadRequest as refused:
        assert refused.status == 429
        return False
    return True


async def _bucket(pool: Pool, provider: str) -> tuple[float, int]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT tokens, leased FROM webhook_limits WHERE provider = %s", (provider,)
        )
        row = await cur.fetchone()
    assert row is not None
    return float(row["tokens"]), int(row["leased"])


async def test_processes_together_admit_no_more_than_the_shared_bucket(pool: Pool) -> None:
    provider = f"p-{uuid.uuid4().hex[:8]}"
    processes = [WebhookTokens(pool, RATE, BURST, lease_s=LEASE_S) for _ in range(3)]
    assert processes[0].lease_size == 10
    started, admitted = time.monotonic(), 0
    for _ in range(4 * BURST):  # round robin, as a balancer spreads webhooks
        for tokens in processes:
            admitted += await _admitted(tokens, provider)
    refill = RATE * (time.monotonic() - started)
    # Every token leased is spent (none expired): the bucket's burst, plus what it
    # refilled meanwhile, taken a whole token at a time.
    assert BURST <= admitted <= BURST + refill + 1
    left, _ = await _bucket(pool, provider)
    assert left < 1


async def test_a_lease_takes_what_is_left_when_less(pool: Pool) -> None:
    provider = f"p-{uuid.uuid4().hex[:8]}"
    first, second = (WebhookTokens(pool, RATE, BURST, lease_s=LEASE_S) for _ in range(2))
    for _ in range(25):
        assert await _admitted(first, provider)  # three leases: 10, 10, 10 (5 unspent)
    left, leased = await _bucket(pool, provider)
    assert left < 1 and leased == 10
    # The second process finds the bucket empty: the first's unspent five are its own.
    assert not await _admitted(second, provider)
    for _ in range(5):
        assert await _admitted(first, provider)
    assert not await _admitted(first, provider)


async def test_a_partial_lease_when_the_bucket_holds_less_than_one(pool: Pool) -> None:
    provider = f"p-{uuid.uuid4().hex[:8]}"
    small = WebhookTokens(pool, RATE, 4, lease_s=LEASE_S)  # a lease is capped at the burst
    assert small.lease_size == 4
    assert [await _admitted(small, provider) for _ in range(5)] == [True] * 4 + [False]
    assert (await _bucket(pool, provider))[1] == 4


async def test_tokens_not_spent_within_the_lease_ttl_are_dropped(pool: Pool) -> None:
    provider = f"p-{uuid.uuid4().hex[:8]}"
    now = [1000.0]
    tokens = WebhookTokens(pool, RATE, BURST, lease_s=LEASE_S, clock=lambda: now[0])
    assert await _admitted(tokens, provider)  # leases 10, spends 1
    before, _ = await _bucket(pool, provider)
    now[0] += LEASE_TTL_S  # the nine left expire
    assert await _admitted(tokens, provider)
    after, leased = await _bucket(pool, provider)
    assert leased == 10 and before - after == pytest.approx(10, abs=1.5)  # a new lease


async def test_concurrent_webhooks_of_one_process_share_one_lease_statement(pool: Pool) -> None:
    provider = f"p-{uuid.uuid4().hex[:8]}"
    tokens = WebhookTokens(pool, RATE, BURST, lease_s=LEASE_S)
    started = time.monotonic()
    answers = await asyncio.gather(*(_admitted(tokens, provider) for _ in range(2 * BURST)))
    refill = RATE * (time.monotonic() - started)
    assert BURST <= sum(answers) <= BURST + refill + 1
    # One lease statement at a time: three leases of 10 emptied the bucket, not 60
    # statements racing for its row.
    left, leased = await _bucket(pool, provider)
    assert left < 1 and leased <= 10


async def test_a_small_limit_leases_one_token_at_a_time(pool: Pool) -> None:
    tokens = WebhookTokens(pool, 0.5, 3)  # tests/test_rate_limits.py's webhook limit
    assert tokens.lease_size == 1
