"""Where the CPU of a withdrawal goes: py-spy on the API and a worker under steady load.

Starts the real stack as bench/throughput.py does (instant provider, sandbox
ledger in its own database), sends withdrawals at a steady rate, samples each
process with py-spy (`pip install py-spy`; it needs ptrace, so run it as root
or with CAP_SYS_PTRACE) and prints the functions that hold the most samples,
by their own time and with what they call, plus the SQL statements per
withdrawal from pg_stat_statements when the server has it.

    python bench/benchlib/profile_stack.py [--rate 40] [--seconds 20]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for benchlib
from benchlib import load
from benchlib.servicestack import SERVICE_DEFAULTS, fresh
from devstack.embedded import start_embedded_nats
from sandbox.stack import API_TOKEN, ProviderSpec, Stack


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    nats_proc, nats_url = start_embedded_nats(store=Path(tempfile.mkdtemp()) / "nats")
    url = fresh("bench_profile")
    spec = ProviderSpec("instant", behaviour="instant", webhook_delay_ms=0)
    work = Path(tempfile.mkdtemp(prefix="profile-"))
    stack = Stack(
        url,
        work,
        [spec],
        workers=1,
        nats_url=nats_url,
        extra_env=SERVICE_DEFAULTS,
        ledger_database_url=fresh("bench_profile_ledger", schema=False),
    )
    stack.start()
    try:
        submit = load.submitter(stack.api_url, API_TOKEN, "warm", "instant")
        load.steady(submit, 10, 2)
        api = next(p.pid for p in stack.procs if "server.py" in str(p.args))
        spies = {
            "API": record(api, args.seconds, work / "api.txt"),
            "worker": record(stack.worker_procs[0].pid, args.seconds, work / "worker.txt"),
        }
        sender = threading.Thread(
            target=load.steady,
            args=(
                load.submitter(stack.api_url, API_TOKEN, "prof", "instant"),
                args.rate,
                args.seconds,
            ),
        )
        sender.start()
        sender.join()
        for name, spy in spies.items():
            spy.wait(timeout=60)
            summarise(name, work / f"{name.lower()}.txt", args.top)
    finally:
        stack.stop()
        nats_proc.terminate()


if __name__ == "__main__":
    main()
