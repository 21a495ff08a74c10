"""`make demo`: a real stack on this machine, a batch of withdrawals, each one's outcome.

Starts (embedded, unless DATABASE_URL is set) PostgreSQL, the sandbox ledger
and providers, the API and two workers; submits withdrawals through the HTTP
API across providers that confirm, decline, fail late or answer slowly; then
prints every withdrawal's path and checks the ledger against the tasks.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from engine.db import apply_schema
from engine.embedded import data_dir, database_url
from sandbox.client import StackClient, expected_ledger_ops
from sandbox.stack import ProviderSpec, Stack

TIMING = {"recheck_base_s": 0.5, "recheck_max_attempts": 3, "webhook_sla_s": 20.0}
MARKET = [
    ProviderSpec("cheapo", behaviour="decline", timing=TIMING),
    ProviderSpec("swiftpay", behaviour="accept_then_fail", webhook_delay_ms=600, timing=TIMING),
    ProviderSpec("flaky", behaviour="error_5xx_after_create", webhook_delay_ms=300, timing=TIMING),
    ProviderSpec("lowbal", behaviour="instant", balance="25.00", timing=TIMING),
    ProviderSpec("steady", behaviour="delayed_webhook", webhook_delay_ms=800, timing=TIMING),
    ProviderSpec("instant", behaviour="instant", timing=TIMING),
]


def fresh_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    apply_schema(url)
    return url


def cascade_for(rng: random.Random) -> list[str]:
    names = [p.name for p in MARKET]
    cut = rng.randint(2, len(names))
    return names[:cut] if rng.random() < 0.7 else rng.sample(names, cut)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    url = fresh_database(database_url(), "payment_demo")
    stack = Stack(url, Path(data_dir()) / "demo", MARKET).start()
    client = StackClient(stack)
    print(f"stack up: API {stack.api_url}, sandbox {stack.sandbox_url}, logs in {stack.workdir}")
    try:
        return run_batch(client, args.count, rng)
    finally:
        stack.stop()


def run_batch(client: StackClient, count: int, rng: random.Random) -> int:
    started = time.monotonic()
    submitted = []
    for i in range(count):
        amount = f"{rng.randint(5, 60)}.{rng.randint(0, 99):02d}"
        order_id = f"demo-{i:03d}-{uuid.uuid4().hex[:6]}"
        response = client.submit(cascade_for(rng), amount=amount, order_id=order_id)
        response.raise_for_status()
        submitted.append(response.json()["id"])
    print(f"submitted {count} withdrawals; waiting for outcomes...\n")
    drift = 0
    outcomes: dict[str, int] = {}
    ops = None
    for queue_id in submitted:
        view = client.wait_final(queue_id, timeout=120)
        ops = client.ledger_ops()
        path = " -> ".join(f"{t['provider']}:{t['status']}" for t in view["tasks"])
        amount = f"{view['amount']} {view['currency']}"
        print(f"{view['order_id']:<18} {amount:>12}  {view['status']:<10} {path}")
        outcomes[view["status"]] = outcomes.get(view["status"], 0) + 1
        for task in view["tasks"]:
            seen = ops.get(task["id"], [])
            drift += seen != expected_ledger_ops(task, "freeze" in seen)
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
    print(f"\n{count} withdrawals in {elapsed:.1f} s ({summary})")
    verdict = "OK, 0 discrepancies" if drift == 0 else f"{drift} DISCREPANCIES"
    print(f"ledger reconciliation: {verdict}")
    return 0 if drift == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
