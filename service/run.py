"""`make run`: the API and N workers against the given URLs, as one supervised group.

DATABASE_URL unset -> the embedded PostgreSQL; NATS_URL unset -> the embedded
nats-server (kept running for the event bridge). Each process logs to its own
file under the data directory (`.data/logs/`); the terminal gets a short status
line whenever the withdrawals' figures change.

SIGINT/SIGTERM/SIGHUP stop every child gracefully, and so does a terminal that
nobody reads any more (`make run | head`). If one child dies, the end of its log
is shown and the rest are stopped too. The children die with the supervisor even
when it is killed (Linux's parent-death signal), and each is recorded under the
data directory, so `make status` and `make stop` find whatever still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from devstack import lifecycle, processes
from devstack.embedded import PROJECT_ROOT, data_dir, database_url, start_embedded_nats
from engine.migrations import migrate

STATUS_EVERY_S = 5.0
LOG_TAIL_LINES = 15
_FIGURES = """
SELECT (SELECT count(*) FROM order_queues WHERE status = 'ACTIVE') AS active,
       (SELECT count(*) FROM order_queues WHERE status = 'COMPLETED') AS completed,
       (SELECT count(*) FROM order_queues WHERE status = 'FAILED') AS failed,
       (SELECT count(*) FROM order_tasks WHERE status = 'MANUAL_CHECK') AS manual,
       (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL) AS dead_letters
"""
Children = dict[str, subprocess.Popen[bytes]]


def main() -> int:
    args = _parser().parse_args()
    if problem := _cannot_start(args):
        print(f"make run: {problem}", file=sys.stderr)
        return 1
    with lifecycle.owner("run"):  # `make stop` finds it; the last one out stops PostgreSQL
        return supervise(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("WORKERS", "1")), help="$WORKERS"
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "8000")), help="the API's, $PORT"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("WORKER_METRICS_PORT") or 9101),
        help="the first worker's /metrics, the next ones' above it; $WORKER_METRICS_PORT",
    )
    return parser


def _cannot_start(args: argparse.Namespace) -> str | None:
    """Why this stack cannot start, found before anything is started: the servers
    would otherwise die one by one with the cause buried in their logs."""
    if (pid := lifecycle.running("run")) is not None:
        return (
            f"already running with this data directory ({data_dir()}), pid {pid};"
            " `make status` shows it, `make stop` stops it"
        )
    wanted = {args.port: "the API's (PORT)"}
    wanted |= {args.metrics_port + i: "a worker's /metrics" for i in range(args.workers)}
    for port, whose in wanted.items():
        if problem := processes.port_in_use(port):
            return (
                f"{problem}; it is {whose}. `make stop` stops a stack of this checkout;"
                " otherwise choose another (PORT=8001 make run)"
            )
    return None


def supervise(args: argparse.Namespace) -> int:
    env = dict(os.environ, DATABASE_URL=database_url(keep_running=True))
    migrate(env["DATABASE_URL"])
    logs = data_dir() / "logs"
    logs.mkdir(exist_ok=True)
    children: Children = {}
    try:
        if "NATS_URL" not in env:
            children["nats"], env["NATS_URL"] = start_embedded_nats(stop_with_parent=True)
            processes.record("run.nats", children["nats"].pid)
        commands = {"api": [sys.executable, "server.py", "--port", str(args.port)]}
        for i in range(args.workers):
            port = str(args.metrics_port + i)
            commands[f"worker-{i}"] = [sys.executable, "worker.py", "--metrics-port", port]
        for name, command in commands.items():
            children[name] = _spawn(command, env, logs / f"{name}.log")
            processes.record(f"run.{name}", children[name].pid)
        banner = (
            f"API http://127.0.0.1:{args.port} (metrics /metrics, console /console),"
            f" {args.workers} worker(s) (metrics :{args.metrics_port}...), logs in {logs};"
            " Ctrl-C stops"
        )
        return _watch(children, env["DATABASE_URL"], logs, (args.port, banner))
    finally:
        _stop(children)


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(  # noqa: S603 - our own entry points
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=processes.die_with_parent,  # the supervisor has no threads
        )


def _watch(children: Children, url: str, logs: Path, api: tuple[int, str]) -> int:
    """Until asked to stop (0), or until a child dies (1): the banner once the API
    listens, then a status line whenever the figures change."""
    asked: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: asked.append(signum))
    port, banner = api
    announced, last, next_status = False, None, 0.0
    while not asked:
        if dead := [name for name, child in children.items() if child.poll() is not None]:
            _report_death(dead[0], children[dead[0]], logs)
            return 1
        if _nobody_reads():  # `make run | head`: the reader left, as a closed terminal
            return 0
        if not announced and _listening(port):
            announced = _say(banner)
        if announced and time.monotonic() >= next_status:
            figures, next_status = _figures(url), time.monotonic() + STATUS_EVERY_S
            if figures is not None and figures != last:
                last = figures
                _say(_status_line(figures))
        time.sleep(0.2)
    return 0


def _stop(children: Children) -> None:
    for child in reversed(children.values()):  # workers and API first, nats-server last
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for name, child in children.items():
        try:
            child.wait(timeout=40)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        processes.forget(f"run.{name}")


def _report_death(name: str, child: subprocess.Popen[bytes], logs: Path) -> None:
    """The real cause on the terminal: the end of the dead child's own log."""
    log = logs / f"{name}.log"
    try:
        logged = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        logged = []
    tail = [line for entry in logged for line in _readable(entry)][-LOG_TAIL_LINES:]
    lines = [f"make run: {name} exited with status {child.returncode}; the end of {log}:"]
    lines += [f"  {line}" for line in tail] or ["  (empty)"]
    lines.append("make run: stopping the rest")
    with contextlib.suppress(OSError):
        print("\n".join(lines), file=sys.stderr, flush=True)


def _readable(entry: str) -> list[str]:
    """A JSON log line as a person reads it (level, logger, message; a traceback's
    lines one by one); any other line as it is."""
    try:
        fields = json.loads(entry)
        head = f"{fields['level']} {fields['logger']}: "
        message = str(fields["message"]).rstrip("\n").splitlines() or [""]
    except (ValueError, KeyError, TypeError):
        return [entry]
    return [head + message[0], *message[1:]]


def _say(line: str) -> bool:
    """Print a line; False once nobody reads the terminal (later output is dropped)."""
    try:
        print(line, flush=True)
        return True
    except OSError:  # EPIPE: the reader of a pipe left
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), sys.stdout.fileno())  # so exit's flush cannot fail too
        return False


def _nobody_reads() -> bool:
    """True when stdout is a pipe whose reader has gone: poll reports an error on it."""
    poller = select.poll()
    try:
        poller.register(sys.stdout.fileno(), 0)  # 0: only errors and hang-ups
    except (OSError, ValueError):
        return False
    return any(event & select.POLLERR for _, event in poller.poll(0))


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _figures(url: str) -> tuple[int, ...] | None:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute(_FIGURES).fetchone()
    except psycopg.Error:
        return None
    return None if row is None else tuple(row)


def _status_line(figures: tuple[int, ...]) -> str:
    active, completed, failed, manual, dead = figures
    return (
        f"{time.strftime('%H:%M:%S')} withdrawals: {active} active, {completed} completed,"
        f" {failed} failed; manual checks {manual}; dead letters {dead}"
    )


if __name__ == "__main__":
    sys.exit(main())
