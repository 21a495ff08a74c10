"""Load for the throughput bench: bursts, steady rates and webhook floods."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from activities.standard_webhooks import signed_headers

Submit = Callable[[int], None]


def burst(submit: Submit, count: int, threads: int = 16) -> None:
    """Submit `count` at once, as fast as `threads` clients can."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(submit, range(count)))


def steady(submit: Submit, rate: float, seconds: float, threads: int = 8) -> int:
    """Submit at `rate` per second for `seconds` (each client keeps its own pace)."""
    total = int(rate * seconds)
    started = time.monotonic()

    def client(k: int) -> None:
        for i in range(k, total, threads):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            submit(i)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, range(threads)))
    return total


def submitter(api_url: str, token: str, prefix: str, provider: str) -> Submit:
    client = httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )

    def submit(i: int) -> None:
        body = {
            "order_id": f"{prefix}-{i:06d}",
            "merchant_id": "bench",
            "amount": "10.00",
            "currency": "EUR",
            "cascade": [provider],
        }
        client.post("/v1/withdrawals", json=body).raise_for_status()

    return submit


async def _webhooks(url: str, secret: str, rate: float, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:

        async def one() -> None:
            nonlocal errors
            body = json.dumps(
                {
                    "type": "order.updated",
                    "data": {"id": "ord_x", "reference": str(uuid.uuid4()), "status": "succeeded"},
                }
            ).encode()
            headers = signed_headers(secret, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
            headers["Content-Type"] = "application/json"
            started = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
                ok = response.status_code == 202
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

        tasks = []
        begin = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, begin + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies, errors


def webhook_flood(
    url: str, secret: str, rate: float, seconds: float
) -> tuple[list[float], int, float]:
    """Signed webhooks at `rate`/s: (latencies, errors, achieved rate)."""
    started = time.monotonic()
    latencies, errors = asyncio.run(_webhooks(url, secret, rate, seconds))
    return latencies, errors, len(latencies) / (time.monotonic() - started)
