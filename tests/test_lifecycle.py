"""The local stack's lifecycle: Ctrl-C on `make run` leaves nothing running (the
embedded PostgreSQL included) and logs no error; `make stop` stops a stack that
another terminal started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devstack.embedded import PROJECT_ROOT, free_port
from sandbox.stack import wait_until


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory of its own. Not under pytest's tmp_path: as root, the embedded
    PostgreSQL runs as another user, who must traverse the path, and every pytest
    that starts (another engineer's, too) makes /tmp/pytest-of-root private again."""
    base = Path(tempfile.mkdtemp(prefix="payment-stack-"))
    base.chmod(0o755)
    try:
        yield base / "data"
    finally:
        for proc in leftovers(base / "data"):  # never leave a stray server behind
            proc.kill()
        psutil.wait_procs(leftovers(base / "data"), timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def env_for(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    return {**env, "PAYMENT_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"}


def start_run(data: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, metrics = free_port(), free_port()  # not 8000 and 9101: another stack may hold them
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.run", "--port", str(port), "--metrics-port", str(metrics)],
        cwd=PROJECT_ROOT,
        env=env_for(data),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a terminal's process group: Ctrl-C reaches all of it
    )
    # The banner comes once the API listens: after it, the terminal has said it all.
    wait_until(
        lambda: (healthy(port) and "Ctrl-C stops" in log.read_text()) or proc.poll() is not None,
        120,
        "make run's API and banner",
    )
    assert proc.poll() is None, log.read_text()[-2000:]
    return proc, port


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def leftovers(data: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " ".join(
                f"{k}={v}" for k, v in (proc.info["environ"] or {}).items()
            )
        except (psutil.Error, TypeError):
            continue
        if str(data) in text and proc.pid != os.getpid():
            found.append(proc)
    return found


def test_ctrl_c_on_make_run_stops_everything_without_an_error(
    data_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    proc, _ = start_run(data_dir, log)
    assert leftovers(data_dir)  # the API, a worker, nats-server and PostgreSQL are up
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
    assert proc.wait(timeout=60) == 0
    wait_until(lambda: not leftovers(data_dir), 30, "every process of the stack to exit")
    logs = [log, *sorted((data_dir / "logs").glob("*.log"))]  # each process's own file
    assert len(logs) >= 3  # the terminal's, the API's and a worker's
    errors = [
        line
        for path in logs
        for line in path.read_text().splitlines()
        if '"level": "error"' in line
    ]
    assert errors == []
    assert "withdrawals:" in log.read_text() or "Ctrl-C stops" in log.read_text()


def test_make_stop_stops_a_stack_started_elsewhere(data_dir: Path, tmp_path: Path) -> None:
    proc, _ = start_run(data_dir, tmp_path / "run.log")
    status = lifecycle(data_dir, "status")
    assert f"DATABASE_URL=postgresql://postgres@/postgres?host={data_dir / 'pg'}" in status.stdout
    assert f"make run: running, pid {proc.pid}" in status.stdout
    stopped = lifecycle(data_dir, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert proc.wait(timeout=30) == 0
    wait_until(lambda: not leftovers(data_dir), 30, "every process of the stack to exit")


def lifecycle(data: Path, command: str) -> subprocess.CompletedProcess[str]:
    """`make status` / `make stop`, from a process of its own (another terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "devstack.lifecycle", command],
        cwd=PROJECT_ROOT,
        env=env_for(data),
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_a_record_is_believed_only_while_its_own_process_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make status` cannot be fooled by a stale record: a dead pid, or a pid that the
    system gave to another program (its start time differs), is pruned, not shown."""
    import json

    from devstack import processes

    monkeypatch.setenv("PAYMENT_DATA_DIR", str(tmp_path))
    processes.record("run", os.getpid())
    dead = subprocess.Popen(["true"])
    dead.wait()
    processes.record("run.api", os.getpid())
    procs = tmp_path / "procs"
    (procs / "run.api.json").write_text(  # our pid, another process's start time
        json.dumps({"role": "run.api", "pid": os.getpid(), "started": 1.0})
    )
    (procs / "run.nats.json").write_text(json.dumps({"pid": dead.pid, "started": 1.0}))
    (procs / "sandbox.json").write_text("not json")
    assert processes.live() == {"run": os.getpid()}
    assert sorted(p.name for p in procs.iterdir()) == ["run.json"]
    processes.forget("run")
    assert processes.live() == {}
