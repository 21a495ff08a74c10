"""`make status` and `make stop`: what the local stack runs, from any terminal.

`make run` and `make sandbox` record their process id under the data directory
while they run; the embedded PostgreSQL has its own `postmaster.pid`. `stop`
ends the supervisors (each stops its children), then the embedded PostgreSQL.
When the last of `make run` / `make sandbox` exits (Ctrl-C), it stops the
embedded PostgreSQL it was using, so nothing is left running without an owner.

`make stop` then stops `make ha`'s cluster with its own command line
(`python -m sandbox.ha_cli stop`): this package knows nothing of the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from devstack.embedded import data_dir, pid_alive

OWNERS = ("run", "sandbox")


def _pid_file(name: str) -> Path:
    return data_dir() / f"{name}.pid"


def running(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


@contextlib.contextmanager
def owner(name: str) -> Iterator[None]:
    """Record this process as `name` while the block runs; on the way out, stop the
    embedded PostgreSQL when no other owner is left (and none was given by URL)."""
    _pid_file(name).write_text(str(os.getpid()))
    try:
        yield
    finally:
        _pid_file(name).unlink(missing_ok=True)
        others = [o for o in OWNERS if o != name and running(o)]
        if not others and "DATABASE_URL" not in os.environ:
            stop_postgres()


def postgres_pid() -> int | None:
    try:
        pid = int((data_dir() / "pg" / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def stop_postgres(timeout_s: float = 30.0) -> bool:
    """Fast shutdown of the embedded PostgreSQL (SIGINT to its postmaster)."""
    pid = postgres_pid()
    if pid is None:
        return False
    os.kill(pid, signal.SIGINT)
    return _wait_gone(pid, timeout_s)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def status() -> list[str]:
    url = os.environ.get("DATABASE_URL")
    pg = postgres_pid()
    if url:
        lines = ["database: DATABASE_URL (not embedded)"]
    elif pg:
        pgdata = data_dir() / "pg"
        lines = [
            f"database: embedded PostgreSQL, pid {pg}",
            f"  DATABASE_URL={_embedded_url(pgdata)}",
        ]
    else:
        lines = ["database: embedded PostgreSQL, not running"]
    for name in OWNERS:
        pid = running(name)
        lines.append(f"make {name}: " + (f"running, pid {pid}" if pid else "not running"))
    return lines


def _embedded_url(pgdata: Path) -> str:
    return f"postgresql://postgres@/postgres?host={pgdata}"


def stop() -> list[str]:
    done = []
    for name in OWNERS:
        pid = running(name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            stopped = _wait_gone(pid, 45)
            done.append(f"make {name} (pid {pid}): " + ("stopped" if stopped else "still running"))
    if "DATABASE_URL" not in os.environ and postgres_pid() is not None:
        done.append("embedded PostgreSQL: " + ("stopped" if stop_postgres() else "still running"))
    return done or ["make run, make sandbox, embedded PostgreSQL: not running"]


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command not in ("status", "stop"):
        print("usage: python -m devstack.lifecycle [status|stop]", file=sys.stderr)
        return 2
    for line in status() if command == "status" else stop():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
