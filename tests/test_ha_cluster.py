"""The 3-node HA PostgreSQL of sandbox/ha_cluster.py (etcd + Patroni), with real
processes: in sync mode a lost primary loses no acknowledged commit, a standby
takes writes within 30 s and the old primary rejoins as a standby; in async mode
`lossy_failover()` really loses acknowledged commits, as the soak's lossy variant
needs. Skips where etcd or Patroni cannot be installed (no root, no apt-get)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from devstack.embedded import free_port
from sandbox.ha_cluster import HaCluster, Mode
from sandbox.ha_env import HaUnavailable, prerequisites, until
from sandbox.ha_probe import HaProbe


@pytest.fixture(scope="module")
def ha_available() -> None:
    try:
        prerequisites()  # installs etcd-server and builds Patroni's venv on first use
    except HaUnavailable as exc:
        pytest.skip(f"no HA cluster on this machine: {exc}")


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture
def make_cluster(ha_available: None) -> Iterator[Callable[[Mode], HaCluster]]:
    # Not under tmp_path: every pytest session resets /tmp/pytest-of-<user> to 0700,
    # and Patroni's user could then no longer reach its files.
    base = Path(tempfile.mkdtemp(prefix="ha-test-"))
    started: list[HaCluster] = []

    def make(mode: Mode) -> HaCluster:
        p = free_ports(8)  # not the default ports: a `make ha` cluster may be running
        cluster = HaCluster(
            base / mode,
            mode,
            pg_ports=(p[0], p[1], p[2]),
            rest_ports=(p[3], p[4], p[5]),
            etcd_ports=(p[6], p[7]),
        )
        started.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in started:
        print(cluster.log_tail(40))  # shown when the test failed
        cluster.stop()
        assert not cluster.running()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def probes() -> Iterator[list[HaProbe]]:
    running: list[HaProbe] = []
    yield running
    for probe in running:
        probe.stop()


def writing_probe(cluster: HaCluster, probes: list[HaProbe]) -> HaProbe:
    probe = HaProbe(cluster.url)
    probes.append(probe)
    probe.start_thread()
    until(lambda: len(probe.acknowledged) >= 30, 20, "the probe commits nothing")
    return probe


def test_sync_failover_loses_no_commit_and_the_old_primary_rejoins(
    make_cluster: Callable[[Mode], HaCluster], probes: list[HaProbe]
) -> None:
    cluster = make_cluster("sync")
    old = cluster.leader()
    assert old is not None
    with psycopg.connect(cluster.url) as conn:  # the multi-host URL lands on the primary
        row = conn.execute("SELECT pg_is_in_recovery(), inet_server_port()").fetchone()
    assert row == (False, old.port)
    probe = writing_probe(cluster, probes)

    probe.killed(cluster.kill_primary())
    until(lambda: probe.failovers, 30, "no commit on a new primary within 30 s of the kill")
    new = cluster.leader()
    assert new is not None and new.name != old.name
    acked = len(probe.acknowledged)
    until(lambda: len(probe.acknowledged) > acked + 20, 10, "the new primary stalls")

    cluster.restart_node(old.name)
    cluster.wait_healthy(60)
    rejoined = {m.name: m for m in cluster.members()}[old.name]
    assert (rejoined.role, rejoined.state) != ("leader", "running")
    assert rejoined.state == "streaming"
    probe.stop()
    assert probe.lost() == set(), f"acknowledged commits lost: {probe.summary()}"
    assert probe.failovers[0] < 30


def test_lossy_failover_loses_acknowledged_commits_in_async_mode(
    make_cluster: Callable[[Mode], HaCluster], probes: list[HaProbe]
) -> None:
    cluster = make_cluster("async")
    probe = writing_probe(cluster, probes)

    probe.killed(cluster.lossy_failover(window_s=1.5))
    until(lambda: probe.failovers, 40, "no commit on a new primary within 40 s of the kill")
    probe.stop()
    lost = probe.lost()
    assert lost, f"lossy_failover lost nothing: {probe.summary()}"
