"""The short chaos soak runs in `make test` (its checks are tested in test_forensics.py)."""

from __future__ import annotations

import subprocess
import sys

from engine.embedded import PROJECT_ROOT


def test_short_chaos_soak_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandbox.soak", "--short"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert lines[-1].endswith("PASSED"), lines[-1]
