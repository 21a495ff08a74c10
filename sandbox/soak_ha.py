"""The soak on a highly available PostgreSQL: `make soak HA=1` and `make soak HA=lossy`.

The service's database is a three-node Patroni cluster (sandbox/ha_cluster.py),
reached through its multi-host URL. The soak's database fault is no longer a
crash-restart in place but a lost machine: the primary's Patroni and postmaster
are SIGKILLed together, Patroni promotes a standby, and the old primary comes
back later as a standby. The soak's other faults go on at the same time.

- `sync` (HA=1): synchronous replication, strict. A failover must lose no
  acknowledged commit: no withdrawal cascade-core was told about disappears.
- `lossy` (HA=lossy): asynchronous replication, and every failover goes to a
  standby that lags (the leader's walsenders are stopped first): the cluster
  loses its last commits on purpose. What must still hold is the money: no
  double payout, no hold left frozen or unknown, no event dropped as another's
  duplicate, once cascade-core has resubmitted what it lost.

cascade-core is played as a real one would behave: a withdrawal it was told 201
about that later reads 404 is submitted again with the same body (and cancelled
again if it had asked to cancel it). A probe writer (sandbox/ha_probe.py) counts
the transactions each failover lost. The sandbox ledger keeps its own PostgreSQL,
which never fails: it is cascade-core's, not ours.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

from devstack.embedded import free_port
from sandbox.client import StackClient
from sandbox.ha_cluster import HaCluster
from sandbox.ha_probe import HaProbe
from sandbox.servers import RestartablePostgres
from sandbox.soak_checks import Check

RECOVERY_TIMEOUT_S = 120.0  # a new writable primary, or the soak gives up on it


@dataclass
class Failover:
    killed: str  # the node that was the primary
    at: float  # time.monotonic() of the kill
    lost: int = 0  # the probe's acknowledged transactions that the new primary lacks
    first_commit_s: float | None = None  # to the first submission committed after it (a canary)


@dataclass
class Core:
    """cascade-core's side: every withdrawal it was told about, and its resubmissions."""

    client: StackClient
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    template: dict[str, Any] | None = None  # the first body told 201: canaries copy it
    lost: set[str] = field(default_factory=set)  # told 201 or 200, later read 404
    resubmissions: int = 0
    _scan: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, path: str, body: dict[str, Any], status: int) -> None:
        """Called by the load for every final answer (chaos.submit_all's `on_answer`)."""
        if path == "/v1/withdrawals" and status in (200, 201):
            self.bodies[body["order_id"]] = body
            self.template = self.template or body
        elif path.endswith("/cancel"):
            self.cancelled.add(path.split("/")[3])

    def resubmit_lost(self) -> int:
        """Read back every acknowledged withdrawal; submit each 404 again, same body."""
        with self._scan:
            found = 0
            for order_id, body in list(self.bodies.items()):
                if _status(self.client, "GET", f"/v1/withdrawals/{order_id}") != 404:
                    continue
                found += 1
                self.lost.add(order_id)
                self.resubmissions += 1
                _status(self.client, "POST", "/v1/withdrawals", body)
                if order_id in self.cancelled:
                    _status(self.client, "POST", f"/v1/withdrawals/{order_id}/cancel", {})
            return found

    def canary(self, order_id: str, since: float) -> float | None:
        """Submit a new withdrawal every 0.25 s until one is created: seconds from
        `since` to its 201 (the service's own recovery, whatever the load does)."""
        if self.template is None:
            return None
        body = {**self.template, "order_id": order_id}
        deadline = since + RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                status = self.client.api.post("/v1/withdrawals", json=body).status_code
            except httpx.TransportError:
                status = 0
            if status in (200, 201):
                self.bodies[order_id] = body
                return time.monotonic() - since
            time.sleep(0.25)  # cascade-core's retry pace, not synchronisation
        return None


def _status(client: StackClient, method: str, path: str, body: Any = None) -> int:
    """The answer's status, retrying a 503 or a dropped connection for up to 60 s."""
    deadline, backoff = time.monotonic() + 60, 0.2
    while True:
        try:
            status = client.api.request(method, path, json=body).status_code
        except httpx.TransportError:
            status = 0
        if status not in (0, 503) or time.monotonic() > deadline:
            return status
        time.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


class Failovers:
    """The soak's database fault on a cluster: the primary's machine is lost."""

    def __init__(self, cluster: HaCluster, probe: HaProbe, core: Core, planned: int) -> None:
        self.cluster, self.probe, self.core, self.planned = cluster, probe, core, planned
        self.lossy = cluster.mode == "async"
        self.done: list[Failover] = []
        self._lost_so_far: set[int] = set()
        self._recovering: list[threading.Thread] = []

    def fault(self) -> None:
        """Kill the primary (lossy: once its last commits reached no standby); the
        cluster recovers, and cascade-core catches up, on a thread of their own."""
        self.cluster.wait_healthy(RECOVERY_TIMEOUT_S)  # strict sync mode needs 3 nodes
        leader = self.cluster.leader()
        if leader is None:
            return
        at = self.cluster.lossy_failover() if self.lossy else self.cluster.kill_node(leader.name)
        self.probe.killed(at)
        failover = Failover(leader.name, at)
        self.done.append(failover)
        recovery = threading.Thread(target=self._recover, args=(failover,), name="recovery")
        recovery.start()
        self._recovering.append(recovery)

    def _recover(self, failover: Failover) -> None:
        canary = f"canary-{failover.killed}-{len(self.done)}"
        failover.first_commit_s = self.core.canary(canary, failover.at)
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while not self.cluster.writable() and time.monotonic() < deadline:
            time.sleep(0.2)  # polling the cluster, not synchronising
        lost = self.probe.lost()
        failover.lost = len(lost - self._lost_so_far)
        self._lost_so_far |= lost
        self.cluster.restart_node(failover.killed)  # it rejoins as a standby
        self.core.resubmit_lost()

    def join(self) -> None:
        for recovery in self._recovering:
            recovery.join()


def figures(failovers: Failovers, core: Core) -> list[tuple[str, object]]:
    done = failovers.done
    return [
        ("primary nodes killed (Patroni and postmaster together)", len(done)),
        ("failovers that lost transactions", sum(f.lost > 0 for f in done)),
        ("withdrawals resubmitted by cascade-core after a 404", core.resubmissions),
        (
            "primary loss to first committed submission (a canary), s",
            ", ".join(f"{f.first_commit_s:.1f}" for f in done if f.first_commit_s is not None),
        ),
        (  # the cluster's own part of it: a writer on a plain connection, retrying at once
            "primary loss to a direct writer's first commit, s",
            ", ".join(f"{s:.1f}" for s in failovers.probe.failovers),
        ),
    ]


def checks(failovers: Failovers, core: Core, client: StackClient, url: str) -> list[Check]:
    """What a failover must not break, read from the outside once the system is quiet."""
    lossy, done = failovers.lossy, failovers.done
    with psycopg.connect(url) as conn:
        tasks = {str(r[0]) for r in conn.execute("SELECT id FROM order_tasks").fetchall()}
    holds = client.sandbox.get("/ledger/v1/holds").json()["holds"]
    unknown_holds = sum(h["key"] not in tasks and h["status"] != "void" for h in holds)
    unknown_orders = len(set(client.provider_orders()) - tasks)
    lost_tx = sum(f.lost for f in done)
    p95 = _p95([f.first_commit_s if f.first_commit_s is not None else 1e9 for f in done])
    return [
        Check("primary kills", len(done), len(done) >= failovers.planned),
        Check(
            "acknowledged withdrawals lost" + (" (then resubmitted)" if lossy else ""),
            len(core.lost),
            lossy or not core.lost,
        ),
        Check(
            "transactions lost in failovers",
            lost_tx,
            sum(f.lost > 0 for f in done) >= 2 if lossy else lost_tx == 0,
        ),
        Check("holds unknown to the service", unknown_holds, unknown_holds == 0),
        Check("provider orders unknown to the service", unknown_orders, unknown_orders == 0),
        Check("primary loss to first commit, p95 s", f"{p95:.1f}", p95 <= 30),
    ]


def _p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 1e9
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


@contextlib.contextmanager
def ha_database(workdir: Path, mode: str) -> Iterator[tuple[HaCluster, str, str]]:
    """A cluster on free ports with the soak's database, and the sandbox ledger's own
    single PostgreSQL: (cluster, the service's multi-host URL, the ledger's URL)."""
    cluster = HaCluster(
        workdir / "ha",
        "async" if mode == "lossy" else "sync",
        pg_ports=(free_port(), free_port(), free_port()),
        rest_ports=(free_port(), free_port(), free_port()),
        etcd_ports=(free_port(), free_port()),
    )
    ledger_pg = RestartablePostgres(workdir / "ledger-pg")
    try:
        cluster.start()
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE soak")
        yield cluster, make_conninfo(cluster.url, dbname="soak"), ledger_pg.database("ledger")
    finally:
        cluster.stop()
        ledger_pg.close()
