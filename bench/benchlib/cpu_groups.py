"""Whose CPU a stretch of load spent, by process group (bench/volume.py's rounds).

Why: the full database's first round has gone into a backlog with the machine's CPU
at 87-95 % (docs/capacity.md, run 11), and the machine-wide figure cannot say whether
the extra went to PostgreSQL's backends of that database, to the service's Python, to
the sandbox, or to nobody on this VM at all (steal: the hypervisor gave the cores to
another guest). A snapshot before and after, per process, answers that.

Groups: each PostgreSQL backend by its database (`pg <database>`, from the process
title PostgreSQL sets), the server's own processes (`pg server`: checkpointer, WAL
writer, background writer), the service's API and workers, the sandbox and issuer,
this bench's own process (the load generator and the samplers), NATS, and the rest.
A process that exits within the stretch loses what it spent since the first
snapshot; the service's processes live for the whole round, so that is the
backends of short connections only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psutil

_BACKEND_TITLE = "postgres: "
_CLIENT = re.compile(r"^(\S+\(\d+\)|\[local\])$")  # 127.0.0.1(43724), [local]


def group_of(name: str, cmdline: list[str], own_pid: int, pid: int) -> str:
    """The group a process's CPU counts to."""
    if pid == own_pid:
        return "bench"
    joined = " ".join(cmdline)
    if name == "postgres" or joined.startswith(_BACKEND_TITLE):
        # A client backend's title names its user, database and client ("postgres:
        # [cluster:] user database 127.0.0.1(43724) INSERT"); the server's own
        # processes ("postgres: 15/main: checkpointer") have no client.
        words = joined.split()
        client = next((i for i, w in enumerate(words) if _CLIENT.match(w)), None)
        if client is not None and client >= 3:
            return f"pg {words[client - 1]}"
        return "pg server"
    for marker, group in (
        ("server.py", "api"),
        ("worker.py", "workers"),
        ("sandbox", "sandbox"),
        ("nats-server", "nats"),
    ):
        if marker in joined:
            return group
    return "other"


@dataclass
class CpuSnapshot:
    """Each process's CPU seconds (user + system) and the machine's steal, at one time."""

    by_pid: dict[int, tuple[str, float]]
    steal_s: float

    @classmethod
    def take(cls, own_pid: int) -> CpuSnapshot:
        by_pid = {}
        for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:  # gone, or not ours to read
                continue
            group = group_of(proc.info["name"] or "", proc.info["cmdline"] or [], own_pid, proc.pid)
            by_pid[proc.pid] = (group, times.user + times.system)
        return cls(by_pid, getattr(psutil.cpu_times(), "steal", 0.0))

    def spent_since(self, before: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per group between `before` and this snapshot, and "steal"."""
        spent: dict[str, float] = {}
        for pid, (group, cpu) in self.by_pid.items():
            earlier = before.by_pid.get(pid)
            # A pid seen before under another group was reused: it started within.
            start = earlier[1] if earlier is not None and earlier[0] == group else 0.0
            spent[group] = spent.get(group, 0.0) + max(cpu - start, 0.0)
        spent["steal"] = max(self.steal_s - before.steal_s, 0.0)
        return spent


def describe(spent: dict[str, float], withdrawals: int, database: str, top: int = 7) -> str:
    """`spent` per withdrawal in ms, the largest first; `database`'s backends "pg db"."""
    per = max(withdrawals, 1)
    named = {("pg db" if g == f"pg {database}" else g): s for g, s in spent.items()}
    steal = named.pop("steal", 0.0)  # always told: it is CPU this VM did not get
    ranked = sorted(named.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{g} {s * 1000 / per:.1f}" for g, s in [*ranked, ("steal", steal)])
