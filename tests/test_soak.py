"""The short chaos soaks run in `make test` (their checks are tested in test_forensics.py):
on one PostgreSQL, and on a three-node Patroni cluster whose primary is killed, in
synchronous mode (nothing acknowledged may be lost) and in the lossy mode (commits
are lost on purpose, and the money must still be right)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devstack.embedded import PROJECT_ROOT
from sandbox.ha_env import HaUnavailable, prerequisites


def run_soak(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandbox.soak", "--short", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert lines[-1].endswith("PASSED"), lines[-1]


def test_short_chaos_soak_passes() -> None:
    run_soak()


@pytest.mark.parametrize("mode", ["sync", "lossy"])
def test_short_chaos_soak_passes_through_failovers(mode: str) -> None:
    try:
        prerequisites()  # installs etcd-server and builds Patroni's venv on first use
    except HaUnavailable as exc:
        pytest.skip(f"no HA cluster on this machine: {exc}")
    run_soak("--ha", mode)
