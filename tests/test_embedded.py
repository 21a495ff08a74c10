"""The embedded defaults a fresh machine relies on: nats-server and PostgreSQL helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from devstack import embedded


async def test_embedded_nats_server_has_jetstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYMENT_DATA_DIR", str(tmp_path))
    proc, url = embedded.start_embedded_nats()
    try:
        client = await nats.connect(url)
        info = await client.jetstream().account_info()
        await client.close()
        assert info.limits is not None
        assert (tmp_path / "nats").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dead_owner_pids_are_pruned(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    handle = tmp_path / ".handle_pids.json"
    handle.write_text(json.dumps([os.getpid(), dead.pid]))
    embedded._prune_dead_handle_pids(tmp_path)
    assert json.loads(handle.read_text()) == [os.getpid()]


def test_database_url_prefers_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://example/db")
    assert embedded.database_url() == "postgresql://example/db"
