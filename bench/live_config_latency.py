"""Live configuration: how long a change takes to reach every process.

Starts the real stack (one API process, WORKERS workers, the sandbox) on a fresh
database of `DATABASE_URL`'s server (the embedded PostgreSQL when unset), with the
service's own defaults (CONFIG_REFRESH_S 2). An admin then changes the rollout
through the ops API, CHANGES times, and the bench polls every process's /metrics
(`live_config_version`) every 10 ms until each applies the new version. Two rounds:

1. notified: the normal path (the insert's NOTIFY wakes every process at once);
2. notifications lost: just before each change, every process's LISTEN connection
   (application_name payment-live-config) is terminated, as a failover or a
   restart would: the NOTIFY reaches nobody, and the change arrives with the
   re-read a process makes when it reconnects, CONFIG_REFRESH_S after the loss.

Prints, per round, the seconds from the ops API's answer to each process applying
the change (p50, p95, max) and a verdict against the 5 s target. Options: --help.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import httpx
from benchlib import pct, sql
from benchlib.servicestack import SERVICE_DEFAULTS, fresh

from sandbox import issuer
from sandbox.stack import ProviderSpec, Stack

DATABASE = "bench_live_config"
TARGET_S = 5.0


def applied(url: str) -> int:
    text = httpx.get(url, timeout=5).text
    found = re.search(r'^live_config_version\{document="rollout"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def one_change(stack: Stack, admin: httpx.Client, k: int, lose_notify: bool) -> list[float]:
    """Seconds from the API's answer until each process applies version k's change."""
    if lose_notify:
        sql(
            stack.database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'payment-live-config'",
        )
    body = {"config": {"merchants": {f"m-{k}": "single_shot"}}, "reason": f"bench change {k}"}
    answer = admin.put("/ops/v1/config/rollout", json=body)
    answer.raise_for_status()
    version, answered = int(answer.json()["version"]), time.monotonic()
    waits, pending = [], set(stack.metrics_urls())
    deadline = answered + 30
    while pending and time.monotonic() < deadline:
        for url in sorted(pending):
            if applied(url) >= version:
                waits.append(time.monotonic() - answered)
                pending.discard(url)
        time.sleep(0.01)  # the polling interval of the measurement itself
    return waits + [float("inf")] * len(pending)


def round_of(stack: Stack, admin: httpx.Client, changes: int, lose: bool) -> list[float]:
    waits: list[float] = []
    for k in range(changes):
        waits += one_change(stack, admin, (2 if lose else 1) * 1000 + k, lose)
        time.sleep(0.3)  # let the listeners reconnect before the next change
    return waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=15)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(
            fresh(DATABASE),
            Path(tmp),
            [ProviderSpec("alpha")],
            workers=args.workers,
            extra_env=dict(SERVICE_DEFAULTS),
        )
        try:
            stack.start()
            token = issuer.access_token(stack.issuer_url, "ada")
            admin = httpx.Client(
                base_url=stack.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            report(stack, admin, args.changes)
        finally:
            stack.stop()


def report(stack: Stack, admin: httpx.Client, changes: int) -> None:
    processes = len(stack.metrics_urls())
    print(f"{changes} changes per round, {processes} processes (1 API, the rest workers)")
    print(f"{'round':<24}{'p50 s':>8}{'p95 s':>8}{'max s':>8}")
    worst = 0.0
    for name, lose in (("notified", False), ("notifications lost", True)):
        waits = round_of(stack, admin, changes, lose)
        worst = max(worst, max(waits))
        print(f"{name:<24}{pct(waits, 0.5):>8.3f}{pct(waits, 0.95):>8.3f}{max(waits):>8.3f}")
    verdict = "PASS" if worst <= TARGET_S else "FAIL"
    print(
        f"every process applied every change within {worst:.2f} s (target {TARGET_S} s): {verdict}"
    )


if __name__ == "__main__":
    main()
