"""One reconciliation run over a ledger of `--holds` holds: how long, and how much memory.

Plants the holds straight into the sandbox ledger's table (`sandbox_ledger.holds`),
with a task behind almost every one, as a ledger in step with the service would
be: paid withdrawals (COMPLETED, the hold committed) and a few in flight (EXECUTING,
the hold frozen). `--drift` holds disagree: half no task knows of (unknown_hold),
half committed behind the service's back (status_mismatch). The sandbox serves the
ledger from its own process; the run is service/reconciliation.py's, in this one.

Prints, for the first run (an empty `ledger_holds`: every hold is written) and a
second (nothing changed: nothing is written): wall time and this process's peak
RSS (ru_maxrss) over its RSS before them. A third run, under tracemalloc (slower),
gives the Python heap's peak. Then, for contrast, the heap's peak of reading the
unpaged listing whole, as `service.ops reconcile` did before paging. Runs on its own database,
payment_bench_reconcile, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from benchlib import sql
from psycopg.conninfo import make_conninfo

from activities.http import OutboundHttp
from activities.ledger import LedgerClient
from activities.standard_webhooks import new_secret
from devstack.embedded import PROJECT_ROOT, database_url, free_port
from engine.migrations import migrate
from sandbox.stack import LEDGER_TOKEN, wait_until
from service.reconciliation import Reconciler, RunResult

DB = "payment_bench_reconcile"  # its own: other benches may be using payment_bench
SANDBOX_TOML = f"""webhook_url = "http://127.0.0.1:1"
ledger_token = "{LEDGER_TOKEN}"
[providers.alpha]
api_key = "sk_test_alpha"
webhook_secret = "{new_secret()}"
"""
# One withdrawal a hold; i picks its fate (%% is a literal %: the statements take params).
PLANT = [
    "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor,"
    " currency, status) SELECT md5('q' || i)::uuid, 'o-' || i, 'h', 'm', 1000, 'EUR',"
    " (CASE WHEN i %% 10 = 0 THEN 'ACTIVE' ELSE 'COMPLETED' END)::queue_status"
    " FROM generate_series(1, %(tasks)s) i",
    "INSERT INTO order_tasks (id, queue_id, position, provider, status, funds)"
    " SELECT md5('t' || i)::uuid, md5('q' || i)::uuid, 0, 'alpha',"
    " (CASE WHEN i %% 10 = 0 THEN 'EXECUTING' ELSE 'SUCCEEDED' END)::task_status,"
    " (CASE WHEN i %% 10 = 0 THEN 'FROZEN' ELSE 'COMMITTED' END)::funds_status"
    " FROM generate_series(1, %(tasks)s) i",
    # the ledger's side: the same keys; the first `mismatched` in-flight ones committed
    "INSERT INTO sandbox_ledger.holds (key, provider, currency, amount_minor, status,"
    " request_hash, order_id)"
    " SELECT md5('t' || i)::uuid::text, 'alpha', 'EUR', 1000,"
    " CASE WHEN i %% 10 = 0 AND i <= 10 * %(mismatched)s THEN 'committed'"
    "      WHEN i %% 10 = 0 THEN 'frozen' ELSE 'committed' END, 'h', 'o-' || i"
    " FROM generate_series(1, %(tasks)s) i",
    "INSERT INTO sandbox_ledger.holds (key, provider, currency, amount_minor, status,"
    " request_hash, order_id)"
    " SELECT 'orphan-' || i, 'alpha', 'EUR', 1000, 'frozen', 'h', 'lost-' || i"
    " FROM generate_series(1, %(unknown)s) i",
]


def plant(url: str, params: dict[str, int]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in PLANT:
            conn.execute(statement, params)
        conn.execute("VACUUM ANALYZE")


def peak_rss_of(pid: int) -> float:
    """Another process's peak RSS (MiB), from Linux's VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


async def measured(what: Callable[[], Awaitable[Any]], trace: bool) -> tuple[Any, float, float]:
    """`what`'s result, wall seconds and, with `trace`, the Python heap's peak (MiB)
    while it ran (tracemalloc slows Python down: the timed runs go untraced)."""
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    result = await what()
    took = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else float("nan")
    tracemalloc.stop()
    return result, took, peak


async def bench(url: str, sandbox: str, page: int, sandbox_pid: int) -> None:
    outbound = OutboundHttp(30.0)
    ledger = LedgerClient(outbound, f"{sandbox}/ledger", LEDGER_TOKEN)
    reconciler = Reconciler(ledger, page, url)
    try:
        await runs(reconciler)
        print(f"the sandbox ledger's process: peak RSS {peak_rss_of(sandbox_pid):.0f} MiB")
        await contrast(sandbox)
        print(f"  and its peak RSS after it: {peak_rss_of(sandbox_pid):.0f} MiB")
    finally:
        await outbound.aclose()


async def runs(reconciler: Reconciler) -> None:
    before = rss_mib()
    print(f"this process: RSS {before:.0f} MiB before the runs")
    for label, trace in (
        ("first run (ledger_holds empty)", False),
        ("second run (nothing changed)", False),
        ("third run, under tracemalloc", True),
    ):
        result, took, heap = await measured(reconciler.run, trace)
        assert isinstance(result, RunResult)
        print(
            f"{label}: {result.holds:,} holds in {took:.1f} s"
            f" ({result.holds / took:,.0f} holds/s), {result.open_findings} findings open"
            + (f"; Python heap peak {heap:.1f} MiB" if trace else "")
        )
        if not trace:
            print(f"  peak RSS so far {peak_rss_mib():.0f} MiB (+{peak_rss_mib() - before:.0f})")


async def contrast(sandbox: str) -> None:
    """The unpaged listing read whole, as `service.ops reconcile` did before paging."""

    async def whole() -> int:
        async with httpx.AsyncClient(timeout=120) as client:
            headers = {"Authorization": f"Bearer {LEDGER_TOKEN}"}
            answer = await client.get(f"{sandbox}/ledger/v1/holds", headers=headers)
            return len(answer.json()["holds"])

    count, took, heap = await measured(whole, True)
    print(
        f"contrast, the unpaged listing read whole: {count:,} holds in {took:.1f} s,"
        f" Python heap peak {heap:.1f} MiB; peak RSS now {peak_rss_mib():.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--holds", type=int, default=100_000)
    parser.add_argument("--drift", type=int, default=100, help="holds that disagree")
    parser.add_argument("--page", type=int, default=500, help="RECONCILE_PAGE_SIZE")
    args = parser.parse_args()
    admin = database_url()
    sql(admin, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', f'CREATE DATABASE "{DB}"')
    url = make_conninfo(admin, dbname=DB)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "sandbox.toml"
        config.write_text(SANDBOX_TOML)
        command = [sys.executable, "-m", "sandbox", "--config", str(config), "--port", str(port)]
        command += ["--database-url", url, "--log-level", "warning"]
        sandbox = subprocess.Popen(command, cwd=PROJECT_ROOT)
        try:
            run(args, url, f"http://127.0.0.1:{port}", sandbox.pid)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
            sql(admin, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


def run(args: argparse.Namespace, url: str, sandbox: str, sandbox_pid: int) -> None:
    migrate(url)
    wait_until(lambda: _up(sandbox), 30, "the sandbox")  # it creates sandbox_ledger
    started = time.perf_counter()
    unknown = args.drift // 2
    params = {"tasks": args.holds - unknown, "mismatched": args.drift - unknown}
    plant(url, params | {"unknown": unknown})
    print(
        f"planted {args.holds:,} holds ({args.drift} disagreeing) and"
        f" {params['tasks']:,} withdrawals in {time.perf_counter() - started:.1f} s;"
        f" pages of {args.page}"
    )
    rss = psutil.Process(sandbox_pid).memory_info().rss / 2**20
    print(f"the sandbox ledger's process: RSS {rss:.0f} MiB before the runs")
    asyncio.run(bench(url, sandbox, args.page, sandbox_pid))


def _up(sandbox: str) -> bool:
    try:
        return httpx.get(f"{sandbox}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
