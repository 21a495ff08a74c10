"""Load for the throughput bench: bursts, steady rates and webhook floods."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

from activities.standard_webhooks import signed_headers

Submit = Callable[[int], None]
CONNECTIONS = 64  # kept-alive connections of the webhook flood


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


def _signed_requests(url: str, secret: str, count: int) -> tuple[str, int, list[bytes]]:
    """Every request of the flood, signed before the clock starts: the load
    generator shares the machine, so it must spend as little as it can while timed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = []
    for _ in range(count):
        body = json.dumps(
            {
                "type": "order.updated",
                "data": {"id": "ord_x", "reference": str(uuid.uuid4()), "status": "succeeded"},
            }
        ).encode()
        headers = signed_headers(secret, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        requests.append(
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode()
            + body
        )
    return host, port, requests


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """One request on a kept-alive HTTP/1.1 connection; returns the status code."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")),
        0,
    )
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def _webhooks(
    url: str, secret: str, rate: float, seconds: float
) -> tuple[list[float], int, float]:
    host, port, requests = _signed_requests(url, secret, int(rate * seconds))
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        free.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    errors = 0

    async def one(request: bytes) -> None:
        nonlocal errors
        started = time.perf_counter()
        conn = await free.get()  # waiting for a connection counts: it is the client's queue
        try:
            ok = await _exchange(*conn, request) == 202
        except (OSError, asyncio.IncompleteReadError, ValueError):
            ok, conn = False, await asyncio.open_connection(host, port)
        free.put_nowait(conn)
        latencies.append(time.perf_counter() - started)
        errors += not ok

    tasks = []
    begin = time.monotonic()
    for i, request in enumerate(requests):
        await asyncio.sleep(max(0.0, begin + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(request)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - begin
    while not free.empty():
        _, writer = free.get_nowait()
        writer.close()
    return latencies, errors, len(latencies) / elapsed


def webhook_flood(
    url: str, secret: str, rate: float, seconds: float
) -> tuple[list[float], int, float]:
    """Signed webhooks at `rate`/s: (latencies, errors, achieved rate)."""
    return asyncio.run(_webhooks(url, secret, rate, seconds))
