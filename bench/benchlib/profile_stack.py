"""Where the CPU of a withdrawal goes: py-spy on the API and a worker under steady load.

Starts the real stack as bench/throughput.py does (instant provider, sandbox
ledger in its own database), sends withdrawals at a steady rate, samples each
process with py-spy (`pip install py-spy`; it needs ptrace, so run it as root
or with CAP_SYS_PTRACE) and prints the functions that hold the most samples,
by their own time and with what they call. Then the cost model
(benchlib/cost_model.py): each process's measured CPU per withdrawal shared
out by kind (engine, HTTP handling, logging and metrics, psycopg, the event
loop), and, when the server has pg_stat_statements loaded
(`shared_preload_libraries`), PostgreSQL's time per statement class.

    python bench/benchlib/profile_stack.py [--rate 40] [--seconds 20] [--py-spy PATH]
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for benchlib
from benchlib import cost_model, load, measure, sql
from benchlib.servicestack import SERVICE_DEFAULTS, fresh
from devstack.embedded import start_embedded_nats
from sandbox.stack import API_TOKEN, ProviderSpec, Stack

DATABASE = "bench_profile"
DRAIN_S = 3.0  # the window goes on while the last withdrawals finish


def record(py_spy: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            "--full-filenames",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise(name: str, path: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [
            f.split(" (")[0] + " " + f.split("(")[-1].split(":")[0].split("/")[-1]
            for f in stack.split(";")
        ]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"\n== {name}: {total} samples")
    print("   own time")
    for frame, n in own.most_common(top):
        print(f"   {100 * n / total:5.1f}%  {frame}")
    print("   with callees (project code)")
    ours = [
        (f, n)
        for f, n in inclusive.most_common()
        if any(p in f for p in ("engine", "activities", "service", "workflows", "webhooks", "jobs"))
    ]
    for frame, n in ours[:top]:
        print(f"   {100 * n / total:5.1f}%  {frame}")


def start_stack(work: Path, nats_url: str, workers: int) -> Stack:
    spec = ProviderSpec("instant", behaviour="instant", webhook_delay_ms=0)
    stack = Stack(
        fresh(DATABASE),
        work,
        [spec],
        workers=workers,
        nats_url=nats_url,
        worker_concurrency=8,
        extra_env=SERVICE_DEFAULTS,
        ledger_database_url=fresh("bench_profile_ledger", schema=False),
    )
    return stack.start()


def profile(stack: Stack, work: Path, args: argparse.Namespace) -> None:
    """Steady load while py-spy samples; then the figures, per withdrawal."""
    submit = load.submitter(stack.api_url, API_TOKEN, "warm", "instant")
    load.steady(submit, 10, 2)
    time.sleep(2)
    api = next(p.pid for p in stack.procs if "server.py" in str(p.args))
    worker = stack.worker_procs[0].pid
    with_sql = _has_statements(stack.database_url)
    if with_sql:
        cost_model.reset_statements(stack.database_url)
    before = measure.Snapshot.take(stack.database_url, DATABASE, [api], [worker])
    window = args.seconds + DRAIN_S
    spies = {
        "API": record(args.py_spy, api, window, work / "api.txt"),
        "worker": record(args.py_spy, worker, window, work / "worker.txt"),
    }
    with cost_model.WaitSampler(stack.database_url) as waits:
        sent = load.steady(
            load.submitter(stack.api_url, API_TOKEN, "prof", "instant"), args.rate, args.seconds
        )
        for spy in spies.values():
            spy.wait(timeout=60)
    after = measure.Snapshot.take(stack.database_url, DATABASE, [api], [worker])
    for name in spies:
        summarise(name, work / f"{name.lower()}.txt", args.top)
    cpu = {"API": after.api_cpu - before.api_cpu, "worker": after.worker_cpu - before.worker_cpu}
    for name in spies:
        kinds = cost_model.python_split(work / f"{name.lower()}.txt")
        cost_model.print_python(name, kinds, 1000 * cpu[name] / sent)
    server_ms = 1000 * (after.server_cpu - before.server_cpu) / sent
    commits = (after.commits - before.commits) / sent
    print(f"\n{sent} withdrawals; commits per withdrawal {commits:.1f} (idle not subtracted)")
    print(
        "backends' waits, ms per withdrawal:",
        ", ".join(f"{k} {10 * n / sent:.2f}" for k, n in waits.waits.most_common(8)),
    )
    if with_sql:
        rows = cost_model.statements(stack.database_url)
        begins = sum(n for q, n, _ in rows if q.strip().upper() == "BEGIN")
        print(f"explicit transactions (BEGIN) per withdrawal {begins / sent:.1f}")
        cost_model.print_sql(rows, sent, server_ms, waits.ms("Lock"))
    else:
        print(f"PostgreSQL CPU {server_ms:.2f} ms per withdrawal; no pg_stat_statements here")


def _has_statements(url: str) -> bool:
    rows = sql(url, "SHOW shared_preload_libraries")
    return "pg_stat_statements" in str(rows[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    )
    args = parser.parse_args()
    random.seed(1)
    nats_proc, nats_url = start_embedded_nats(store=Path(tempfile.mkdtemp()) / "nats")
    work = Path(tempfile.mkdtemp(prefix="profile-"))
    stack = start_stack(work, nats_url, workers=1)
    try:
        profile(stack, work, args)
    finally:
        stack.stop()
        nats_proc.terminate()


if __name__ == "__main__":
    main()
