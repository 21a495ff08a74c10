"""`make ha` and `make stop`: the HA test cluster (sandbox/ha_cluster.py) from a terminal.

    python -m sandbox.ha_cli start [--mode sync|async]   # detached; prints the URL
    python -m sandbox.ha_cli status | stop

The cluster outlives the command that started it: its pid file (ha_cluster.json,
under `<data dir>/ha/cluster` unless --dir) is how `status` and `stop` find it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from devstack.embedded import data_dir
from sandbox.ha_cluster import STATE_FILE, HaCluster


def stop_from_dir(base_dir: Path) -> str:
    """Stop the cluster recorded under base_dir (used by `make stop`)."""
    if not (base_dir / STATE_FILE).exists():
        return "not running"
    HaCluster.attach(base_dir).stop()
    return "stopped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.ha_cli")
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--mode", choices=["sync", "async"], default="sync")
    parser.add_argument("--dir", type=Path, default=data_dir() / "ha" / "cluster")
    args = parser.parse_args(argv)
    base: Path = args.dir.resolve()
    if args.command == "stop":
        print(f"HA cluster: {stop_from_dir(base)}")
        return 0
    cluster = HaCluster.attach(base) if (base / STATE_FILE).exists() else None
    if cluster is not None and not cluster.running():
        cluster.stop()  # the leftovers of a run that died
        cluster = None
    if args.command == "status":
        for m in cluster.members() if cluster else []:
            print(f"{m.name}  {m.role:<12} {m.state:<10} port {m.port}")
        print(cluster.url if cluster else "HA cluster: not running")
        return 0
    if cluster is None:
        cluster = HaCluster(base, args.mode)
        started = time.monotonic()
        cluster.start()
        print(f"HA cluster ({args.mode}) started in {time.monotonic() - started:.1f} s")
    else:
        print(f"HA cluster already running ({cluster.mode}) from {base}")
    print(cluster.url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
