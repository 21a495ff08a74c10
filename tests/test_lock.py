"""`make setup` installs exactly what requirements.lock says, and the lock covers
everything pyproject.toml asks for (`make lock` re-resolves it)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, tuple[str, str | None]]:
    pins: dict[str, tuple[str, str | None]] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[_norm(match[1])] = (match[2], match[3])
    return pins


def test_every_locked_package_is_installed_at_its_locked_version() -> None:
    drift = []
    for name, (version, marker) in _locked().items():
        if marker and not Marker(marker).evaluate():
            continue  # another platform's package (colorama on Windows, say)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            drift.append(f"{name}: locked {version}, installed {installed}")
    assert not drift, "run `make setup` (or `make lock` after changing pyproject.toml)"


def test_the_lock_covers_every_requirement_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    locked = _locked()
    missing = [r for r in wanted if _norm(Requirement(r).name) not in locked]
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    for requirement in wanted:
        parsed = Requirement(requirement)
        version = locked[_norm(parsed.name)][0]
        assert parsed.specifier.contains(version, prereleases=True), (requirement, version)
    blocks = (ROOT / "requirements.lock").read_text().split("\n" + "")
    unhashed = [line for line in blocks if _PIN.match(line) and not line.rstrip().endswith("\\")]
    assert not unhashed, f"pins without hashes: {unhashed}"  # each pin continues with hashes
