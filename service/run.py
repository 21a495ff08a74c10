"""`make run`: the API and N workers against the given URLs, as one supervised group.

DATABASE_URL unset -> the embedded PostgreSQL; NATS_URL unset -> the embedded
nats-server (kept running for the event bridge). Each process logs to its own
file under the data directory (`.data/logs/`); the terminal gets a short status
line whenever the withdrawals' figures change. SIGINT/SIGTERM stop every child
gracefully; if one child dies, the rest are stopped too.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import IO

import psycopg

from devstack import lifecycle
from devstack.embedded import PROJECT_ROOT, data_dir, database_url, start_embedded_nats
from engine.migrations import migrate

STATUS_EVERY_S = 5.0
_FIGURES = """
SELECT (SELECT count(*) FROM order_queues WHERE status = 'ACTIVE') AS active,
       (SELECT count(*) FROM order_queues WHERE status = 'COMPLETED') AS completed,
       (SELECT count(*) FROM order_queues WHERE status = 'FAILED') AS failed,
       (SELECT count(*) FROM order_tasks WHERE status = 'MANUAL_CHECK') AS manual,
       (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL) AS dead_letters
"""


def main() -> int:
    with lifecycle.owner("run"):  # `make stop` finds it; the last one out stops PostgreSQL
        return supervise()


def supervise() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("WORKERS", "1")), help="$WORKERS"
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "8000")), help="the API's, $PORT"
    )
    args = parser.parse_args()
    env = dict(os.environ, DATABASE_URL=database_url(keep_running=True))
    migrate(env["DATABASE_URL"])
    logs = data_dir() / "logs"
    logs.mkdir(exist_ok=True)
    children: list[subprocess.Popen[bytes]] = []
    if "NATS_URL" not in env:
        nats, env["NATS_URL"] = start_embedded_nats()
        children.append(nats)
    python = sys.executable
    commands = {"api": [python, "server.py", "--port", str(args.port)]}
    for i in range(args.workers):
        commands[f"worker-{i}"] = [python, "worker.py", "--metrics-port", str(9101 + i)]
    for name, command in commands.items():
        children.append(_spawn(command, env, (logs / f"{name}.log").open("wb")))
    print(
        f"API http://127.0.0.1:{args.port} (metrics /metrics, console /console),"
        f" {args.workers} worker(s) (metrics :9101...), logs in {logs}; Ctrl-C stops",
        flush=True,
    )
    return _watch(children, env["DATABASE_URL"])


def _spawn(command: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own entry points
        command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _watch(children: list[subprocess.Popen[bytes]], url: str) -> int:
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    last, next_status = "", 0.0
    while not stopping and all(c.poll() is None for c in children):
        if time.monotonic() >= next_status:
            line, next_status = _status(url), time.monotonic() + STATUS_EVERY_S
            if line and line != last:
                print(line, flush=True)
                last = line
        time.sleep(0.2)
    for child in reversed(children):  # workers and API first, nats-server last
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=40)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0 if stopping else 1


def _status(url: str) -> str:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute(_FIGURES).fetchone()
    except psycopg.Error:
        return ""
    if row is None:
        return ""
    active, completed, failed, manual, dead = row
    return (
        f"{time.strftime('%H:%M:%S')} withdrawals: {active} active, {completed} completed,"
        f" {failed} failed; manual checks {manual}; dead letters {dead}"
    )


if __name__ == "__main__":
    sys.exit(main())
