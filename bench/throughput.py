"""Engine cost: the service against bare procrastinate state machines, same server, same run.

Starts the real stack (API, workers, sandbox ledger in its own database, an
instant provider, nats-server) on a fresh database of `DATABASE_URL`'s server
(the embedded PostgreSQL when unset), then two baselines on others: `base-io`
(benchlib/baseline_io.py: the same HTTP calls, webhook and notification, over
the same sandbox) and `base-noio` (benchlib/baseline.py: the steps alone). For
each: burst throughput with 1 and 2 workers, commits and jobs per withdrawal
(the server's own counters, idle traffic subtracted), Python CPU per withdrawal
by process, their sum with PostgreSQL's (own CPU: sandbox and load generator
excluded), idle commits per second per worker, submit -> SUCCEEDED latency at
steady rates, webhook ingest, worker memory. The last two columns are service /
each baseline, 2 workers. Options: --help.

`--ha`: the service on one PostgreSQL against the service on a three-node Patroni
cluster in synchronous mode (sandbox/ha_cluster.py), in the same run, 2 workers:
what synchronous replication costs (the last column is HA / single node).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import psutil
import psycopg
from benchlib import load, measure, pct
from benchlib.servicestack import SERVICE_DEFAULTS, fresh, make_key
from benchlib.targets import Baseline, BaselineIO
from psycopg.conninfo import conninfo_to_dict

from devstack.embedded import database_url, free_port, start_embedded_nats
from sandbox.stack import API_TOKEN, ProviderSpec, Stack, wait_until


def finished(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def latencies(url: str, query: str) -> dict[str, float]:
    with psycopg.connect(url) as conn:
        xs = [float(r[0]) * 1000 for r in conn.execute(query).fetchall()]
    return {f"p{q}": pct(xs, q / 100) for q in (50, 95, 99)} if xs else {}


class Target(Protocol):
    """One system under test: start it with N workers, send load, count what finished."""

    name: str
    database: str
    done_query: str
    latency_query: str  # {prefix}: the order ids of one steady run
    url: str

    def start(self, workers: int) -> None: ...
    def stop(self) -> None: ...
    def burst(self, prefix: str, count: int) -> None: ...
    def steady(self, prefix: str, rate: float, seconds: float) -> int: ...
    def pids(self) -> tuple[list[int], list[int]]: ...


class Service:
    name, database = "service", "bench_service"
    done_query = "SELECT count(*) FROM order_queues WHERE status <> 'ACTIVE'"
    latency_query = (
        "SELECT extract(epoch FROM t.updated_at - q.created_at) FROM order_queues q"
        " JOIN order_tasks t ON t.queue_id = q.id AND t.status = 'SUCCEEDED'"
        " WHERE q.order_id LIKE '{prefix}-%'"
    )

    def __init__(
        self,
        nats_url: str,
        api_processes: int = 1,
        server: str | None = None,
        name: str = "",
        api_key: bool = False,
    ) -> None:
        """`server`: an admin URL of the PostgreSQL to run on (default: DATABASE_URL's).
        `api_key`: submit with an API key (limits far above the load) instead of the
        bootstrap token, so the figures include the key's check and its slot."""
        self.nats_url = nats_url
        self.api_processes = api_processes
        self.api_key = api_key
        self.token = API_TOKEN
        self.stack: Stack | None = None
        self.server = server
        self.name = name or self.name

    def start(self, workers: int) -> None:
        self.url = fresh(self.database, admin=self.server)
        ledger = fresh("bench_ledger", schema=False)  # the ledger is cascade-core's: not HA
        spec = ProviderSpec("instant", behaviour="instant", webhook_delay_ms=0)
        self.stack = Stack(
            self.url,
            Path(tempfile.mkdtemp(prefix="bench-")),
            [spec],
            workers=workers,
            nats_url=self.nats_url,
            worker_concurrency=8,
            extra_env={**SERVICE_DEFAULTS, "API_PROCESSES": str(self.api_processes)},
            ledger_database_url=ledger,
        )
        self.stack.start()
        if self.api_key:
            unlimited = ("--rate-per-s=1000000", "--burst=1000000", "--max-in-flight=10000")
            self.token = make_key(self.stack, *unlimited)

    def stop(self) -> None:
        assert self.stack is not None
        self.stack.stop()

    def _submit(self, prefix: str) -> load.Submit:
        assert self.stack is not None
        return load.submitter(self.stack.api_url, self.token, prefix, "instant")

    def burst(self, prefix: str, count: int) -> None:
        load.burst(self._submit(prefix), count)

    def steady(self, prefix: str, rate: float, seconds: float) -> int:
        return load.steady(self._submit(prefix), rate, seconds)

    def pids(self) -> tuple[list[int], list[int]]:
        assert self.stack is not None
        api = [p.pid for p in self.stack.procs if "server.py" in str(p.args) and p.poll() is None]
        api += [c.pid for pid in api for c in psutil.Process(pid).children(recursive=True)]
        return api, [p.pid for p in self.stack.worker_procs]


def wait_done(target: Target, count: int, timeout: float) -> None:
    wait_until(lambda: finished(target.url, target.done_query) >= count, timeout, "the load", 0.2)


def run_config(target: Target, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Idle traffic, then a burst, then (with 2 workers) steady rates and webhooks."""
    row: dict[str, Any] = {}
    target.start(workers)
    try:
        target.burst("warm", 20)
        wait_done(target, 20, 60)
        idle = measure.idle_commits_per_s(target.url, target.database, args.idle_s)
        row["idle commits/s per worker"] = idle / workers
        api, ws = target.pids()
        rss_before = measure.rss_mb(ws)
        before = measure.Snapshot.take(target.url, target.database, api, ws)
        started = time.monotonic()
        target.burst("burst", args.count)
        wait_done(target, 20 + args.count, args.count)
        elapsed = time.monotonic() - started
        time.sleep(measure.STATS_SETTLE_S)
        after = measure.Snapshot.take(target.url, target.database, api, ws)
        busy = after.commits - before.commits - idle * (after.at - before.at)
        row["burst withdrawals/s"] = args.count / elapsed
        row["commits per withdrawal"] = busy / args.count
        row["jobs per withdrawal"] = (after.jobs - before.jobs) / args.count
        row["CPU ms per withdrawal, API"] = 1000 * (after.api_cpu - before.api_cpu) / args.count
        row["CPU ms per withdrawal, workers"] = (
            1000 * (after.worker_cpu - before.worker_cpu) / args.count
        )
        row["PostgreSQL CPU ms per withdrawal, backends"] = (
            1000 * (after.server_cpu - before.server_cpu) / args.count
        )
        row["PostgreSQL shared writers CPU ms (anyone's)"] = (
            1000 * (after.shared_cpu - before.shared_cpu) / args.count
        )
        row["own CPU ms per withdrawal (Python + PostgreSQL)"] = sum(
            row[f"{k} ms per withdrawal{w}"]
            for k, w in (("CPU", ", API"), ("CPU", ", workers"), ("PostgreSQL CPU", ", backends"))
        )
        row["worker RSS MB before -> after"] = f"{rss_before:.0f} -> {measure.rss_mb(ws):.0f}"
        if workers == 2:
            row |= steady_rates(target, args, idle)
            if isinstance(target, Service) and target.stack is not None:
                row |= webhooks(target.stack, args)
    finally:
        target.stop()
    return row


def steady_rates(target: Target, args: argparse.Namespace, idle_rate: float) -> dict[str, Any]:
    """`idle_rate`: the configuration's idle commits/s, subtracted from the 40/s count."""
    row: dict[str, Any] = {}
    done = finished(target.url, target.done_query)
    api, ws = target.pids()
    for rate in (10.0, 40.0):
        prefix = f"steady{int(rate)}"
        before = measure.Snapshot.take(target.url, target.database, api, ws)
        sent = target.steady(prefix, rate, args.steady_s)
        ended = time.monotonic()
        done += sent
        wait_done(target, done, 120)
        row[f"{rate:.0f}/s: drain after the last submit, s"] = time.monotonic() - ended
        if rate == 40.0:  # the cost when the service keeps up (no burst backlog)
            time.sleep(measure.STATS_SETTLE_S)
            after = measure.Snapshot.take(target.url, target.database, api, ws)
            idle = idle_rate * (after.at - before.at)
            row["40/s: commits per withdrawal"] = (after.commits - before.commits - idle) / sent
            row["40/s: CPU ms per withdrawal, API + workers"] = (
                1000
                * (after.api_cpu - before.api_cpu + after.worker_cpu - before.worker_cpu)
                / sent
            )
        lat = latencies(target.url, target.latency_query.format(prefix=prefix))
        row[f"{rate:.0f}/s: submit->SUCCEEDED p50/p95/p99 ms"] = "/".join(
            f"{lat.get(k, float('nan')):.0f}" for k in ("p50", "p95", "p99")
        )
    return row


def webhooks(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    url, secret = f"{stack.api_url}/webhooks/instant", stack.secrets["instant"]
    lat, errors, achieved = load.webhook_flood(url, secret, args.webhook_rate, 10)
    ms = [x * 1000 for x in lat]
    return {
        f"webhooks at {args.webhook_rate:.0f}/s: achieved/s": achieved,
        "webhooks: p50/p99 ms, errors": f"{pct(ms, 0.5):.0f}/{pct(ms, 0.99):.0f}, {errors}",
    }


RATIOS = ("service, 2 workers", ("base-io, 2 workers", "base-noio, 2 workers"))


def report(
    results: dict[str, dict[str, Any]], ratio_of: tuple[str, tuple[str, ...]] = RATIOS
) -> None:
    """One column per configuration, then `ratio_of[0]` / each of `ratio_of[1]`."""
    names = list(results)
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    heads = [f"/ {b.split(',')[0]}" for b in ratio_of[1]]
    print(f"\n{'figure':<48}" + "".join(f"{n:>21}" for n in [*names, *heads]))
    for key in keys:
        cells = [_fmt(results[n].get(key, "")) for n in names]
        a = results.get(ratio_of[0], {}).get(key)
        for base in ratio_of[1]:
            b = results.get(base, {}).get(key)
            ok = isinstance(a, float) and isinstance(b, float) and b
            cells.append(f"{a / b:.2f}" if ok else "")  # type: ignore[operator]
        print(f"{key:<48}" + "".join(f"{c:>21}" for c in cells))


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="withdrawals per burst")
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--steady-s", type=float, default=15.0)
    parser.add_argument("--webhook-rate", type=float, default=500.0)
    parser.add_argument(
        "--workers",
        default="1,2",
        help="worker counts to run, comma-separated (steady rates and webhooks run with 2)",
    )
    # 2: one API process per core of this machine. The service runs a withdrawal's steps
    # in the API process that committed them, so with one process its Python is capped
    # at one core (0.70x base-io in a burst, 2026-12-07), while base-io spreads its steps
    # over two worker processes. docs/capacity.md has both.
    parser.add_argument("--api-processes", type=int, default=2, help="API_PROCESSES")
    parser.add_argument(
        "--api-key", action="store_true", help="submit with an API key, not the bootstrap token"
    )
    parser.add_argument(
        "--only", choices=["service", "base-io", "base-noio"], help="run one side only"
    )
    parser.add_argument(
        "--ha", action="store_true", help="single node against a Patroni cluster (sync), 2 workers"
    )
    args = parser.parse_args()
    if args.ha:
        ha_main(args)
        return
    nats_proc, nats_url = start_embedded_nats(store=Path(tempfile.mkdtemp()) / "nats")
    server = conninfo_to_dict(database_url(keep_running=True)).get("host", "?")
    print(f"throughput bench: {args.count} per burst, PostgreSQL at {server}")
    results: dict[str, dict[str, Any]] = {}
    try:
        service = Service(nats_url, args.api_processes, api_key=args.api_key)
        targets: list[Target] = [service, BaselineIO(), Baseline()]
        for target in [t for t in targets if args.only in (None, t.name)]:
            for workers in [int(w) for w in args.workers.split(",")]:
                print(f"... {target.name} with {workers} worker(s)", flush=True)
                results[f"{target.name}, {workers} worker{'s' * (workers > 1)}"] = run_config(
                    target, workers, args
                )
    finally:
        nats_proc.terminate()
    report(results)


def ha_main(args: argparse.Namespace) -> None:
    """The service on one PostgreSQL and on a synchronous three-node cluster, one run."""
    from sandbox.ha_cluster import HaCluster  # only this mode needs Patroni and etcd

    ports = [free_port() for _ in range(8)]
    cluster = HaCluster(
        Path(tempfile.mkdtemp(prefix="bench-ha-")),
        "sync",
        pg_ports=(ports[0], ports[1], ports[2]),
        rest_ports=(ports[3], ports[4], ports[5]),
        etcd_ports=(ports[6], ports[7]),
    )
    nats_proc, nats_url = start_embedded_nats(store=Path(tempfile.mkdtemp()) / "nats")
    print(f"throughput bench: {args.count} per burst, one PostgreSQL against a Patroni cluster")
    results: dict[str, dict[str, Any]] = {}
    try:
        cluster.start()
        for target in (
            Service(nats_url, args.api_processes, name="single node"),
            Service(nats_url, args.api_processes, server=cluster.url, name="HA sync"),
        ):
            print(f"... {target.name} with 2 workers", flush=True)
            results[f"{target.name}, 2 workers"] = run_config(target, 2, args)
    finally:
        nats_proc.terminate()
        cluster.stop()
    report(results, ratio_of=("HA sync, 2 workers", ("single node, 2 workers",)))


if __name__ == "__main__":
    main()
