"""`make run`, `make status`, `make stop` and `make sandbox` as a newcomer meets them
(issue 26): a pipe that closes, a supervisor that is killed and a sandbox that gets
SIGTERM leave nothing running that `make status` does not show and `make stop`
does not stop, and a second `make run` starts cleanly or names the port in use.

Each test has its own data directory and free ports, so it meets no other test's
stack; the `data_dir` fixture kills whatever is left in it, even on failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from devstack.embedded import PROJECT_ROOT, free_port
from sandbox.stack import wait_until
from service.run import STATUS_EVERY_S
from tests.test_lifecycle import data_dir, env_for, leftovers

__all__ = ["data_dir"]  # the fixture: a data directory of its own, cleaned up

# `-o`: never remake the venv's stamp (a shared or older venv is used as it is).
MAKE = ["make", "--no-print-directory", "-o", ".venv/.installed"]
BANNER = "Ctrl-C stops"


@pytest.fixture
def make_env(data_dir: Path) -> dict[str, str]:
    return {**env_for(data_dir), "PORT": str(free_port()), "WORKER_METRICS_PORT": str(free_port())}


def make(env: dict[str, str], target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAKE, target], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def live_pids(data: Path) -> set[int]:
    alive = set()
    for proc in leftovers(data):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.add(proc.pid)
        except psutil.Error:
            continue
    return alive


def shown_by_status(env: dict[str, str], data: Path) -> tuple[str, set[int]]:
    """`make status`'s output, and the stack's processes alive both before and after
    it ran (a process that exits meanwhile cannot be held against it)."""
    before = live_pids(data)
    out = make(env, "status").stdout
    return out, before & live_pids(data)


def postgres_children(pid: int) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def assert_status_names_everything(env: dict[str, str], data: Path) -> str:
    out, alive = shown_by_status(env, data)
    named = {int(word.rstrip(",)")) for word in out.split() if word.rstrip(",)").isdigit()}
    # A postmaster's own backends are shown by their postmaster's pid.
    covered = named | {c for pid in named for c in postgres_children(pid)}
    assert alive <= covered, (out, [psutil.Process(p).cmdline() for p in alive - covered])
    return out


def test_make_run_piped_into_head_then_status_stop_and_a_second_run(
    data_dir: Path, make_env: dict[str, str], tmp_path: Path
) -> None:
    piped = subprocess.run(
        ["bash", "-c", f"{' '.join(MAKE)} run 2>&1 | head -n 3"],
        cwd=PROJECT_ROOT,
        env=make_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert BANNER in piped.stdout, piped.stdout + piped.stderr
    assert_status_names_everything(make_env, data_dir)  # whatever still runs is shown
    stopped = make(make_env, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_until(lambda: not live_pids(data_dir), 30, "every process of the stack to exit")

    second, log = start_make_run(make_env, tmp_path / "second.log")
    try:
        wait_until(lambda: BANNER in log.read_text() or second.poll() is not None, 90, "make run")
        text = log.read_text()
        if second.poll() is not None:  # it may fail only by naming the port someone took
            assert f"port {make_env['PORT']}" in text, text
            return
        api = f"http://127.0.0.1:{make_env['PORT']}/healthz"
        assert httpx.get(api, timeout=5).status_code == 200
        status_line_only_when_figures_change(log)
        kill_supervisor_and_check(make_env, data_dir, second)
        ops_leaves_nothing_running(make_env, data_dir)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGTERM)
            second.wait(timeout=60)


def start_make_run(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], Path]:
    proc = subprocess.Popen(
        [*MAKE, "run"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own terminal-like group, killed as one in the end
    )
    return proc, log


def kill_supervisor_and_check(
    env: dict[str, str], data: Path, make_proc: subprocess.Popen[bytes]
) -> None:
    """A supervisor killed outright: its children go with it; the PostgreSQL it leaves
    is shown as having no owner, and `make stop` stops it."""
    status = make(env, "status").stdout
    supervisor = int(status.split("make run: running, pid ")[1].split()[0])
    children = {c.pid for c in psutil.Process(supervisor).children()}
    os.kill(supervisor, signal.SIGKILL)
    make_proc.wait(timeout=30)
    wait_until(lambda: not (children & live_pids(data)), 60, "the children to die with it")
    out = assert_status_names_everything(env, data)
    assert "with no owner" in out, out
    assert "make run: not running" in out, out
    assert make(env, "stop").returncode == 0
    wait_until(lambda: not live_pids(data), 30, "the embedded PostgreSQL to stop")


def test_a_sigterm_to_the_sandbox_leaves_no_record_and_no_postgres(
    data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "sandbox.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--config", "config/sandbox.toml", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env_for(data_dir),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: answers(port) or proc.poll() is not None, 90, "the sandbox")
        assert proc.poll() is None, log.read_text()[-2000:]
        assert (data_dir / "procs" / "sandbox.json").exists()
        assert live_pids(data_dir)  # the embedded PostgreSQL it started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(data_dir.glob("*.pid")), list(data_dir.glob("*.pid"))
    assert not list((data_dir / "procs").glob("*")), list((data_dir / "procs").glob("*"))
    assert not live_pids(data_dir), log.read_text()[-2000:]  # no PostgreSQL without an owner


def answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
        return True
    except httpx.HTTPError:
        return False


def ops_leaves_nothing_running(env: dict[str, str], data: Path) -> None:
    """The ops command line on a stopped stack: it starts the embedded PostgreSQL for
    itself, says so, and stops it again (it used to leave it running, unowned)."""
    done = subprocess.run(
        [sys.executable, "-m", "service.ops", "manual", "--json"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
    assert "stopped after it" in done.stderr
    assert not live_pids(data)


def status_line_only_when_figures_change(log: Path) -> None:
    """Nothing changes on an idle stack: one status line, not one every 5 s."""
    wait_until(lambda: "withdrawals:" in log.read_text(), 30, "the first status line")
    deadline = time.monotonic() + 2 * STATUS_EVERY_S + 1  # two more looks at the figures
    while time.monotonic() < deadline:
        assert log.read_text().count("withdrawals:") == 1, log.read_text()
        time.sleep(0.2)


def test_a_make_run_that_cannot_start_says_why_on_the_terminal(
    data_dir: Path, make_env: dict[str, str]
) -> None:
    with socket.socket() as taken:  # someone else's server on the API's port
        taken.bind(("127.0.0.1", int(make_env["PORT"])))
        taken.listen()
        refused = make(make_env, "run")
    assert refused.returncode != 0
    assert f"port {make_env['PORT']} on 127.0.0.1 is not free" in refused.stderr, refused.stderr
    assert not live_pids(data_dir)  # found before anything was started
    broken = make({**make_env, "PROVIDERS_FILE": "/nonexistent/providers.toml"}, "run")
    assert broken.returncode != 0
    assert "exited with status" in broken.stderr, broken.stdout + broken.stderr
    assert "No such file or directory: '/nonexistent/providers.toml'" in broken.stderr
    assert BANNER not in broken.stdout  # no success banner before the failure
    wait_until(lambda: not live_pids(data_dir), 30, "the rest of the stack to stop")
