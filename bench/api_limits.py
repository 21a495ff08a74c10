"""API keys and their limits: what a key costs per request, and a load at five times
a key's rate.

Starts the real stack (API_PROCESSES API processes, one worker, an instant provider,
the sandbox ledger) on a fresh database of `DATABASE_URL`'s server (the embedded
PostgreSQL when unset), with the service's own defaults, and makes two keys with
the ops command line. Then:

1. cost: the same reads (`GET /v1/withdrawals/{id}`, 8 clients) with the bootstrap
   token and with a key (one statement to admit, one to give the slot back),
   alternated in rounds: API CPU and PostgreSQL CPU per request, p50/p99;
2. limits: key A sends at 5x its rate while key B sends at its own rate, both
   submitting withdrawals: every answer over A's limit must be a 429 with
   Retry-After, no refused request may leave a row, and B must lose nothing.

Prints the figures and a verdict line. Options: --help.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
from benchlib import pct, sql
from benchlib.measure import cpu_s, server_cpu_s
from benchlib.servicestack import SERVICE_DEFAULTS, fresh, make_key
from psycopg.conninfo import conninfo_to_dict

from devstack.embedded import database_url, start_embedded_nats
from sandbox.stack import API_TOKEN, ProviderSpec, Stack

DATABASE = "bench_api_limits"
CLIENTS = 8


def api_pids(stack: Stack) -> list[int]:
    api = [p.pid for p in stack.procs if "server.py" in str(p.args) and p.poll() is None]
    return api + [c.pid for pid in api for c in psutil.Process(pid).children(recursive=True)]


def _body(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "merchant_id": "bench", "amount": "10.00", "currency": "EUR"}


def reads(stack: Stack, token: str, path: str, count: int) -> dict[str, float]:
    """`count` reads from CLIENTS clients: CPU per request (API, PostgreSQL) and latency."""
    pids, times = api_pids(stack), []
    clients = [
        httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {token}"})
        for _ in range(CLIENTS)
    ]

    def client(k: int) -> None:
        for _ in range(count // CLIENTS):
            started = time.perf_counter()
            clients[k].get(path).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)

    api_before, db_before = cpu_s(pids), server_cpu_s(DATABASE)
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    done = len(times)
    return {
        "API CPU ms / request": 1000 * (cpu_s(pids) - api_before) / done,
        "PostgreSQL CPU ms / request": 1000 * (server_cpu_s(DATABASE) - db_before) / done,
        "p50 ms": pct(times, 0.5),
        "p99 ms": pct(times, 0.99),
    }


def cost(stack: Stack, key: str, count: int, rounds: int) -> dict[str, dict[str, float]]:
    """Bootstrap token against key, alternated, each figure averaged over the rounds."""
    submitted = httpx.post(
        f"{stack.api_url}/v1/withdrawals",
        json={**_body(f"read-{uuid.uuid4().hex[:8]}"), "cascade": ["instant"]},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    path = f"/v1/withdrawals/{submitted.json()['id']}"
    reads(stack, API_TOKEN, path, count // 4)  # warm both paths' connections and caches
    reads(stack, key, path, count // 4)
    runs: dict[str, list[dict[str, float]]] = {"bootstrap token": [], "API key": []}
    for _ in range(rounds):
        runs["bootstrap token"].append(reads(stack, API_TOKEN, path, count))
        runs["API key"].append(reads(stack, key, path, count))
    return {
        name: {k: sum(r[k] for r in results) / len(results) for k in results[0]}
        for name, results in runs.items()
    }


def paced(stack: Stack, key: str, prefix: str, rate: float, seconds: float) -> list[Any]:
    """Submit at `rate`/s for `seconds` from 2 x CLIENTS clients: (order id, status,
    Retry-After, retry_after_s) each."""
    total, started, answers = int(rate * seconds), time.monotonic(), []
    headers = {"Authorization": f"Bearer {key}"}
    http = httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)

    def client(k: int) -> None:
        for i in range(k, total, 2 * CLIENTS):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))  # load pacing
            order_id = f"{prefix}-{i:06d}"
            answer = http.post("/v1/withdrawals", json={**_body(order_id), "cascade": ["instant"]})
            wait = answer.headers.get("Retry-After")
            body_wait = answer.json()["error"].get("retry_after_s") if answer.is_error else None
            answers.append((order_id, answer.status_code, wait, body_wait))

    with ThreadPoolExecutor(2 * CLIENTS) as pool:
        list(pool.map(client, range(2 * CLIENTS)))
    return answers


def limits(stack: Stack, args: argparse.Namespace) -> tuple[list[str], bool]:
    """Key A at 5x its rate, key B at its rate, at once: the figures and whether they hold."""
    options = (f"--rate-per-s={args.rate}", f"--burst={args.burst}")
    a_key, b_key = make_key(stack, *options), make_key(stack, *options)
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        flood = pool.submit(paced, stack, a_key, "a", 5 * args.rate, args.seconds)
        steady = pool.submit(paced, stack, b_key, "b", args.rate, args.seconds)
        a, b = flood.result(), steady.result()
        elapsed = time.monotonic() - started
    allowed = args.burst + args.rate * elapsed
    a_ok = [order for order, status, _, _ in a if status == 201]
    refused = [(status, wait, body) for _, status, wait, body in a if status != 201]
    proper = [s == 429 and w is not None and str(body) == w for s, w, body in refused]
    stored = {r[0] for r in sql(stack.database_url, "SELECT order_id FROM order_queues")}
    leaked = [order for order, status, _, _ in a if status != 201 and order in stored]
    b_lost = [status for _, status, _, _ in b if status != 201]
    lines = [
        f"key A asked for 5x its {args.rate:.0f}/s (burst {args.burst}): sent {len(a)} in"
        f" {elapsed:.1f} s ({len(a) / elapsed / args.rate:.1f}x), admitted {len(a_ok)} (the"
        f" limit allows at most {allowed:.0f}), refused {len(refused)}",
        f"  refused answers that are 429 with Retry-After (= retry_after_s): {sum(proper)}"
        f" of {len(refused)}",
        f"  rows left by refused requests: {len(leaked)}",
        f"key B at {args.rate:.0f}/s meanwhile: sent {len(b)}, admitted {len(b) - len(b_lost)},"
        f" refused {len(b_lost)}",
    ]
    holds = len(a_ok) <= allowed + 1 and all(proper) and not leaked and not b_lost
    return lines, holds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-processes", type=int, default=2, help="API_PROCESSES")
    parser.add_argument("--reads", type=int, default=2000, help="reads per round and credential")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=10.0, help="keys A and B: rate per second")
    parser.add_argument("--burst", type=int, default=10, help="keys A and B: burst")
    parser.add_argument("--seconds", type=float, default=10.0, help="the load's length")
    args = parser.parse_args()
    nats_proc, nats_url = start_embedded_nats(store=Path(tempfile.mkdtemp()) / "nats")
    server = conninfo_to_dict(database_url(keep_running=True)).get("host", "?")
    print(f"api limits bench: {args.api_processes} API processes, PostgreSQL at {server}")
    stack = Stack(
        fresh(DATABASE),
        Path(tempfile.mkdtemp(prefix="bench-limits-")),
        [ProviderSpec("instant", behaviour="instant", webhook_delay_ms=0)],
        workers=1,
        nats_url=nats_url,
        extra_env={**SERVICE_DEFAULTS, "API_PROCESSES": str(args.api_processes)},
    )
    try:
        stack.start()
        verdict = run(stack, args)
    finally:
        stack.stop()
        nats_proc.terminate()
        sql(database_url(), f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    print(f"verdict: {'OK' if verdict else 'FAIL'}")


def run(stack: Stack, args: argparse.Namespace) -> bool:
    unlimited = make_key(stack, "--rate-per-s=1000000", "--burst=1000000", "--max-in-flight=1000")
    figures = cost(stack, unlimited, args.reads, args.rounds)
    names = list(figures)
    print(f"\n{'per read, ' + str(CLIENTS) + ' clients':<32}" + "".join(f"{n:>18}" for n in names))
    for key in figures[names[0]]:
        print(f"{key:<32}" + "".join(f"{figures[n][key]:>18.2f}" for n in names))
    lines, holds = limits(stack, args)
    print("\n" + "\n".join(lines))
    return holds


if __name__ == "__main__":
    main()
