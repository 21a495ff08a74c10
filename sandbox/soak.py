"""`make soak`: a seeded chaos soak of the whole stack, with every fault at once.

Its own PostgreSQL (embedded, in a temporary directory: it is crashed) and its
own nats-server; the sandbox ledger and the market of config/markets/outage.toml
(the demo's outage scenario: the bad hour is one more fault) plus a
provider whose creates hang; the API and workers under a supervisor. While the
withdrawals go in, it SIGKILLs workers on a schedule (the supervisor starts
replacements), crashes PostgreSQL in immediate mode and starts it again, makes
the ledger fail before and after applying, stops nats-server, cancels some
withdrawals and resends stale and duplicate webhooks. Then it lets the system go
quiet and checks money, liveness and events from the outside (soak_checks.py).
The last line is the verdict; the exit status is non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from engine.migrations import migrate
from sandbox.chaos import Chaos, Plan, submit_all
from sandbox.client import StackClient
from sandbox.ha_cluster import HaCluster
from sandbox.ha_probe import HaProbe
from sandbox.scenarios import market_env, market_specs, resolve
from sandbox.servers import NatsServer, RestartablePostgres
from sandbox.soak_ha import Core, Failovers, ha_database
from sandbox.soak_report import Run, report
from sandbox.stack import ProviderSpec, Stack

SOAK_ENV = {
    "ACTIVITY_MAX_RETRIES": "200",
    "ACTIVITY_RETRY_BASE_S": "0.25",
    "ACTIVITY_RETRY_CAP_S": "3",
    "SWEEP_GRACE_S": "15",
    "DB_ACQUIRE_TIMEOUT_S": "2",
}


def plan_from(args: argparse.Namespace) -> Plan:
    if args.short:
        return Plan(count=200, spread_s=40, pg_restarts=2, nats_down_s=8, seed=args.seed)
    return Plan(
        count=args.count, spread_s=args.spread, pg_restarts=3, nats_down_s=60, seed=args.seed
    )


def quiet(url: str) -> bool:
    """Every withdrawal final or with a person; no step queued; every event out."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM order_queues q WHERE q.status = 'ACTIVE' AND NOT EXISTS"
            "   (SELECT 1 FROM order_tasks t WHERE t.queue_id = q.id AND t.status = 'MANUAL_CHECK'"
            "    AND t.target IS NULL))"
            " + (SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            "    AND queue_name IN ('activities', 'webhooks'))"
            " + (SELECT count(*) FROM outbox WHERE published_at IS NULL)"
        ).fetchone()
    return row == (0,)


def run(args: argparse.Namespace) -> int:
    plan = plan_from(args)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    nats_server = NatsServer(workdir / "nats")
    nats_server.start()
    try:
        with contextlib.ExitStack() as resources:
            if args.ha:
                cluster, url, ledger_url = resources.enter_context(ha_database(workdir, args.ha))
                return soak(args, plan, workdir, nats_server, url, None, (cluster, ledger_url))
            pg = RestartablePostgres(workdir / "pg")
            resources.callback(pg.close)
            return soak(args, plan, workdir, nats_server, pg.database("soak"), pg, None)
    finally:
        nats_server.stop()


def soak(
    args: argparse.Namespace,
    plan: Plan,
    workdir: Path,
    nats_server: NatsServer,
    url: str,
    pg: RestartablePostgres | None,
    ha: tuple[HaCluster, str] | None,
) -> int:
    market = tomllib.loads(Path(args.market).read_text())
    migrate(url)
    stack = soak_stack(url, market, plan, workdir, nats_server.url, ha[1] if ha else None)
    print(
        f"soak: seed {plan.seed}, {plan.count} withdrawals over {plan.spread_s:.0f}s"
        f"{f', on a Patroni cluster ({args.ha})' if ha else ''}, logs in {workdir}"
    )
    started = time.monotonic()
    probe = HaProbe(url) if ha else None
    try:
        stack.start()
        client = StackClient(stack)
        core = Core(client)
        failovers = watch_failovers(ha[0], probe, core, plan) if ha and probe else None
        chaos = Chaos(stack, client, pg, nats_server, plan, failovers.fault if failovers else None)
        answers = load_under_chaos(chaos, client, market, plan, core, failovers)
        quiet_after = settle(client, url, args.quiet_timeout)
        chaos.stop_supervising()
        return report(
            Run(client, stack, url, nats_server.url, plan, chaos, answers, plan.count),
            quiet_after,
            args.quiet_timeout,
            time.monotonic() - started,
            (failovers, core) if failovers else None,
        )
    finally:
        if probe:
            probe.stop()
        stack.stop()


def soak_stack(
    url: str,
    market: dict[str, Any],
    plan: Plan,
    workdir: Path,
    nats_url: str,
    ledger_url: str | None,
) -> Stack:
    """The market's providers plus one whose creates hang, under the soak's retry and
    sweep settings; `ledger_url` (HA) puts the sandbox ledger on a database of its own."""
    return Stack(
        url,
        workdir / "stack",
        [*market_specs(market), ProviderSpec("hangs", behaviour="timeout")],
        workers=plan.workers,
        nats_url=nats_url,
        market_seed=plan.seed,
        worker_concurrency=8,
        extra_env={**SOAK_ENV, **market_env(market)},
        ledger_database_url=ledger_url,
    )


def watch_failovers(cluster: HaCluster, probe: HaProbe, core: Core, plan: Plan) -> Failovers:
    """On a cluster the soak's database fault is a failover: the probe's writes start
    (they count the commits a failover loses, and time each one) and the kills are
    scheduled against them."""
    probe.start_thread()
    return Failovers(cluster, probe, core, plan.pg_restarts)


def load_under_chaos(
    chaos: Chaos,
    client: StackClient,
    market: dict[str, Any],
    plan: Plan,
    core: Core,
    failovers: Failovers | None,
) -> Counter[int]:
    """Submits every withdrawal while the faults run; returns the API's answers by status."""
    chaos_thread = threading.Thread(target=chaos.run, name="chaos")
    chaos_thread.start()
    answers, chaos.cancels = submit_all(client, market, plan, core.answered)
    chaos_thread.join()
    if failovers:
        failovers.join()
        core.resubmit_lost()  # what the last failover lost, cascade-core sends again
    return answers


def settle(client: StackClient, url: str, quiet_timeout: float) -> float:
    """Ends the last fault and waits (at most `quiet_timeout`) for quiet; the seconds
    from the last fault to quiet."""
    client.set_ledger_faults()  # the last fault; from here on the system settles alone
    last_fault = time.monotonic()
    deadline = last_fault + quiet_timeout
    while not quiet(url) and time.monotonic() < deadline:
        time.sleep(1)
    return time.monotonic() - last_fault


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="about two minutes (make test)")
    parser.add_argument("--count", type=int, default=2000, help="withdrawals (long run)")
    parser.add_argument("--spread", type=float, default=240.0, help="seconds to submit over")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--quiet-timeout", type=float, default=300.0)
    parser.add_argument("--market", default=str(resolve("outage")))
    parser.add_argument(
        "--ha",
        choices=("sync", "lossy"),
        help="on a three-node Patroni cluster whose primary is killed (lossy: asynchronous,"
        " each failover loses its last commits on purpose); docs/ha.md",
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
