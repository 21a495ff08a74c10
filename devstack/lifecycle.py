"""`make status` and `make stop`: what the local stack runs, from any terminal.

`make run` and `make sandbox`, and each process `make run` starts, are recorded
under the data directory (devstack/processes.py: pid and start time, so a
record never outlives its process); the embedded PostgreSQL has its own
`postmaster.pid`. `stop` ends the supervisors (each stops its children), then
anything a dead supervisor left, then the embedded PostgreSQL. When the last of
`make run` / `make sandbox` exits (Ctrl-C, SIGTERM, a closed terminal), it stops
the embedded PostgreSQL it was using, so nothing is left running without an owner.

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

import psutil

from devstack import processes
from devstack.embedded import data_dir, postgres_pid

OWNERS = processes.SUPERVISORS


def running(name: str) -> int | None:
    return processes.live().get(name)


def _exit_on_signal(signum: int, _frame: object) -> None:
    # An exception, not the default death: the owner's clean-up below then runs.
    # uvicorn re-raises the SIGTERM it caught once it has shut down; that lands here.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def owner(name: str) -> Iterator[None]:
    """Record this process as `name` while the block runs; on the way out, however it
    is asked to end (Ctrl-C, SIGTERM, SIGHUP), forget it and stop the embedded
    PostgreSQL when no other owner is left (and none was given by URL)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    processes.record(name, os.getpid())
    try:
        yield
    finally:
        processes.forget(name)
        others = [o for o in OWNERS if o != name and running(o)]
        if not others and "DATABASE_URL" not in os.environ:
            stop_postgres()


def stop_postgres(timeout_s: float = 30.0) -> bool:
    """Fast shutdown of the embedded PostgreSQL (SIGINT to its postmaster)."""
    pid = postgres_pid()
    if pid is None:
        return False
    os.kill(pid, signal.SIGINT)
    return _wait_gone(pid, timeout_s)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _alive(pid: int) -> bool:
    # A zombie has exited: only its parent has yet to reap it (a test that started it,
    # say). Waiting for it to vanish would wait for that parent, not for the process.
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def status() -> list[str]:
    """What runs, each line read from the data directory's records."""
    live = processes.live()
    lines = _database_lines(any(o in live for o in OWNERS))
    for name in OWNERS:
        children = ", ".join(
            f"{role.split('.', 1)[1]} pid {pid}"
            for role, pid in live.items()
            if role.startswith(f"{name}.")
        )
        if name in live:
            lines.append(
                f"make {name}: running, pid {live[name]}" + (f" ({children})" * bool(children))
            )
        elif children:
            lines.append(
                f"make {name}: not running, but left running: {children} (make stop stops them)"
            )
        else:
            lines.append(f"make {name}: not running")
    return lines


def _database_lines(owned: bool) -> list[str]:
    pg = postgres_pid()
    lines = ["database: DATABASE_URL (not embedded)"] if os.environ.get("DATABASE_URL") else []
    if pg:
        owner_note = "" if owned else " with no owner (make stop stops it)"
        lines += [
            f"embedded PostgreSQL: running, pid {pg}{owner_note}",
            f"  DATABASE_URL={_embedded_url(data_dir() / 'pg')}",
        ]
    elif not lines:
        lines = ["embedded PostgreSQL: not running"]
    return lines


def _embedded_url(pgdata: Path) -> str:
    return f"postgresql://postgres@/postgres?host={pgdata}"


def stop() -> list[str]:
    """Stop every recorded process, supervisors first (each stops its own children),
    then what a dead supervisor left, then the embedded PostgreSQL."""
    done = []
    for role, pid in processes.live().items():
        if not _alive(pid):  # a supervisor stopped it a moment ago
            continue
        os.kill(pid, signal.SIGTERM)
        stopped = _wait_gone(pid, 45)
        label = f"make {role}" if role in OWNERS else role.replace(".", "'s ", 1)
        done.append(f"{label} (pid {pid}): " + ("stopped" if stopped else "still running"))
    if postgres_pid() is not None:
        done.append("embedded PostgreSQL: " + ("stopped" if stop_postgres() else "still running"))
    return done or ["make run, make sandbox, embedded PostgreSQL: nothing was running"]


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
