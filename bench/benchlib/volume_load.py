"""bench/volume.py's steady load: submissions at a rate, and waiting for them to be final."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from benchlib import pct, sql
from sandbox.stack import API_TOKEN

BEGUN = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - BEGUN:6.0f} s] {text}", flush=True)


@dataclass
class Load:
    """Submissions at a steady rate from 8 clients until stopped: each one's wall time
    at submission, its HTTP round trip and its answer's status."""

    api_url: str
    prefix: str
    rate: float
    sent: list[tuple[float, float, int]] = field(default_factory=list)  # appends are atomic
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def errors(self) -> int:
        """Answers other than 201: nothing was stored."""
        return sum(status != 201 for _, _, status in self.sent)

    def run(self, seconds: float | None = None, clients: int = 8) -> None:
        started = time.monotonic()
        total = int(self.rate * seconds) if seconds else None
        http = httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30
        )

        def client(k: int) -> None:
            i = k
            while (total is None or i < total) and not self.stop.is_set():
                time.sleep(max(0.0, started + i / self.rate - time.monotonic()))  # pacing
                body = {
                    "order_id": f"{self.prefix}-{i:07d}",
                    "merchant_id": "bench",
                    "amount": "10.00",
                    "currency": "EUR",
                    "cascade": ["alpha"],
                }
                at, begun = time.time(), time.perf_counter()
                answer = http.post("/v1/withdrawals", json=body)
                self.sent.append((at, time.perf_counter() - begun, answer.status_code))
                i += clients

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        http.close()


def settle(url: str, prefix: str, count: int, since: datetime, timeout: float = 180) -> int:
    """Wait for the `count` withdrawals accepted to be final; how many are not."""
    query = (
        "SELECT count(*) FROM order_queues WHERE created_at >= %s AND order_id LIKE %s"
        " AND status <> 'ACTIVE'"
    )
    deadline = time.monotonic() + timeout
    while True:
        final = int(sql(url, query, params=(since, f"{prefix}-%"))[0][0])
        if final >= count or time.monotonic() > deadline:
            return count - final
        time.sleep(0.5)


def drain(url: str, pattern: str, upto: datetime, timeout: float = 900) -> float:
    """Wait until every withdrawal whose order id is LIKE `pattern`, accepted before
    `upto`, is final (the stack keeps working them off); the seconds it took."""
    query = (
        "SELECT count(*) FROM order_queues WHERE status = 'ACTIVE' AND created_at < %s"
        " AND order_id LIKE %s"
    )
    return until_none(url, query, (upto, pattern), timeout)


def until_none(url: str, count: str, params: tuple[object, ...], timeout: float) -> float:
    """Poll `count` (a count(*) query) until it is 0 or `timeout` passes; the seconds
    it took. What it counts is worked off by the running stack."""
    started = time.monotonic()
    deadline = started + timeout
    while int(sql(url, count, params=params)[0][0]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return time.monotonic() - started


def latencies(url: str, prefix: str, since: datetime) -> list[tuple[float, float]]:
    """(submitted at, seconds to SUCCEEDED) of each of the load's withdrawals."""
    rows = sql(
        url,
        "SELECT extract(epoch FROM q.created_at), extract(epoch FROM t.updated_at - q.created_at)"
        " FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id AND t.status = 'SUCCEEDED'"
        " WHERE q.created_at >= %s AND q.order_id LIKE %s",
        params=(since, f"{prefix}-%"),
    )
    return [(float(a), float(b)) for a, b in rows]


def p(xs: list[float], q: float) -> float:
    return pct(xs, q) * 1000 if xs else float("nan")
