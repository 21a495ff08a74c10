"""`make run`: the API and N workers against the given URLs, as one supervised group.

DATABASE_URL unset -> the embedded PostgreSQL; NATS_URL unset -> the embedded
nats-server (kept running for the event bridge). SIGINT/SIGTERM stop every child
gracefully; if one child dies, the rest are stopped too.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from engine import lifecycle
from engine.embedded import PROJECT_ROOT, database_url, start_embedded_nats
from engine.migrations import migrate


def main() -> int:
    with lifecycle.owner("run"):  # `make stop` finds it; the last one out stops PostgreSQL
        return supervise()


def supervise() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "1")))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    env = dict(os.environ, DATABASE_URL=database_url(keep_running=True))
    migrate(env["DATABASE_URL"])
    children: list[subprocess.Popen[bytes]] = []
    if "NATS_URL" not in env:
        nats, env["NATS_URL"] = start_embedded_nats()
        children.append(nats)
    python = sys.executable
    commands = [[python, "server.py", "--port", str(args.port)]]
    commands += [[python, "worker.py"] for _ in range(args.workers)]
    children += [subprocess.Popen(c, cwd=PROJECT_ROOT, env=env) for c in commands]  # noqa: S603
    print(f"API on http://127.0.0.1:{args.port}, {args.workers} worker(s); Ctrl-C stops")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(c.poll() is None for c in children):
        time.sleep(0.2)
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=40)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
