"""The faults of the HA test cluster (sandbox/ha_cluster.py): a lost machine, and a
failover that loses acknowledged commits on purpose (async mode)."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

from sandbox.ha_env import alive, children, cmdline, postmaster_pid, signal_all, until

if TYPE_CHECKING:
    from sandbox.ha_cluster import HaCluster


def kill_node(cluster: HaCluster, name: str) -> float:
    """A lost machine: SIGKILL the node's Patroni, its postmaster and every backend
    at once (a postmaster killed alone is restarted in place by its Patroni).
    Returns time.monotonic() of the kill."""
    patroni = cluster.pids.get(name)
    pids = [patroni] if patroni and alive(patroni) else []
    postmaster = postmaster_pid(cluster.data(name))
    if postmaster:
        pids += [postmaster, *children(postmaster)]
    signal_all(pids)
    killed_at = time.monotonic()
    cluster._reap(name)
    until(lambda: not any(alive(p) for p in pids), 10, f"{name} survived SIGKILL")
    return killed_at


def lossy_failover(cluster: HaCluster, window_s: float) -> float:
    """Lose the last window_s of acknowledged commits (async mode only).

    The leader's walsenders are stopped (SIGSTOP), so no WAL leaves it while its
    commits go on being acknowledged; then the node is killed, and Patroni promotes
    a standby that never received them (maximum_lag_on_failover is 1 GiB in async
    mode). Stopping the standbys' walreceivers instead loses nothing: the WAL waits
    in their sockets and is read when they resume (tried: 0 of 209 lost).
    Returns time.monotonic() of the kill."""
    if cluster.mode != "async":
        raise ValueError("lossy_failover needs mode='async' (sync mode never loses a commit)")
    leader = cluster.leader()
    postmaster = postmaster_pid(cluster.data(leader.name)) if leader else None
    if leader is None or postmaster is None:
        raise RuntimeError("no leader")
    senders = [p for p in children(postmaster) if "walsender" in cmdline(p)]
    if not senders:
        raise RuntimeError("the leader has no walsender to stop")
    signal_all(senders, signal.SIGSTOP)
    time.sleep(window_s)  # the commits acknowledged now reach no standby
    return kill_node(cluster, leader.name)
