"""The configuration files of the HA test cluster (sandbox/ha_cluster.py): etcd's
command line and each Patroni node's patroni.yml (written as JSON, which is YAML).

A TEST cluster: every connection from 127.0.0.1 (and the local socket) is trusted,
with no passwords; the superuser is `postgres`, which also replicates and rewinds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HBA = [
    "local all all trust",
    "local replication all trust",
    "host all all 127.0.0.1/32 trust",
    "host replication all 127.0.0.1/32 trust",
]
PARAMETERS = {  # small, so three nodes and the service fit on two cores
    "max_connections": 150,  # the service opens several pools
    "shared_buffers": "32MB",
    "work_mem": "4MB",
    "maintenance_work_mem": "32MB",
    "effective_cache_size": "256MB",
    "max_wal_size": "256MB",
    "min_wal_size": "64MB",
    "wal_keep_size": "128MB",
    "wal_log_hints": "on",  # pg_rewind
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "jit": "off",
    "logging_collector": "on",  # the server's log in <data>/log
}


def etcd_argv(etcd: str, data: Path, client_port: int, peer_port: int) -> list[str]:
    """One etcd member on 127.0.0.1, on its own ports (not 2379/2380)."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        *(etcd, "--name", "ha", "--data-dir", str(data)),
        *("--listen-client-urls", client, "--advertise-client-urls", client),
        *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
        *("--initial-cluster", f"ha={peer}"),
    ]


def patroni_config(
    *,
    scope: str,
    name: str,
    node_dir: Path,
    pg_port: int,
    rest_port: int,
    etcd_port: int,
    sync: bool,
    bin_dir: Path,
) -> dict[str, Any]:
    rest = f"127.0.0.1:{rest_port}"
    return {
        "scope": scope,
        "name": name,
        "restapi": {"listen": rest, "connect_address": rest},
        "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"]},
        "bootstrap": _bootstrap(sync),
        "postgresql": _postgresql(f"127.0.0.1:{pg_port}", node_dir, bin_dir),
    }


def _bootstrap(sync: bool) -> dict[str, Any]:
    """What the first node writes to etcd for the whole cluster, and how it runs initdb."""
    return {
        "dcs": {
            # Patroni 4.1 raises a smaller ttl to 20 s: a lost leader's key expires
            # after about 20 s, and only then is a standby promoted.
            "ttl": 20,
            "loop_wait": 2,
            "retry_timeout": 5,
            # async: a lagging standby may be promoted (and commits lost)
            "maximum_lag_on_failover": 1 << 20 if sync else 1 << 30,
            "synchronous_mode": sync,
            "synchronous_mode_strict": sync,
            "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": PARAMETERS},
        },
        "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
    }


def _postgresql(address: str, node_dir: Path, bin_dir: Path) -> dict[str, Any]:
    """One node's own PostgreSQL: where it listens, its data and binaries, its access."""
    user = {"username": "postgres"}
    return {
        "listen": address,
        "connect_address": address,
        "data_dir": str(node_dir / "data"),
        "bin_dir": str(bin_dir),
        "pgpass": str(node_dir / "pgpass"),
        "authentication": {"superuser": user, "replication": user, "rewind": user},
        "parameters": {"unix_socket_directories": str(node_dir)},
        "pg_hba": HBA,
        "use_pg_rewind": True,
        # a node that cannot rewind, or whose timeline diverged, is cloned again
        "remove_data_directory_on_rewind_failure": True,
        "remove_data_directory_on_diverged_timelines": True,
    }
