"""`make soak`: a seeded chaos soak of the whole stack, with every fault at once.

Its own PostgreSQL (embedded, in a temporary directory: it is crashed) and its
own nats-server; the sandbox ledger and the market of config/market.toml plus a
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
import re
import signal
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg

from engine.migrations import migrate
from sandbox import soak_checks as checks
from sandbox.chaos import Chaos, Plan, submit_all
from sandbox.client import StackClient
from sandbox.demo import MARKET_FILE, market_env, market_specs
from sandbox.ha_cluster import HaCluster
from sandbox.ha_probe import HaProbe
from sandbox.servers import NatsServer, RestartablePostgres
from sandbox.soak_ha import Core, Failovers, ha_database
from sandbox.soak_ha import checks as ha_checks
from sandbox.soak_ha import figures as ha_figures
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


def api_5xx_other_than_503(log: Path) -> int:
    statuses = re.findall(r'HTTP/1\.1\\?" (5\d\d)', log.read_text(errors="replace"))
    return sum(s != "503" for s in statuses)


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
    specs = [*market_specs(market), ProviderSpec("hangs", behaviour="timeout")]
    stack = Stack(
        url,
        workdir / "stack",
        specs,
        workers=plan.workers,
        nats_url=nats_server.url,
        market_seed=plan.seed,
        worker_concurrency=8,
        extra_env={**SOAK_ENV, **market_env(market)},
        ledger_database_url=ha[1] if ha else None,
    )
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
        failovers = None
        if ha and probe:
            probe.start_thread()
            failovers = Failovers(ha[0], probe, core, plan.pg_restarts)
        chaos = Chaos(stack, client, pg, nats_server, plan, failovers.fault if failovers else None)
        chaos_thread = threading.Thread(target=chaos.run, name="chaos")
        chaos_thread.start()
        answers, chaos.cancels = submit_all(client, market, plan, core.answered)
        submitted = plan.count
        chaos_thread.join()
        if failovers:
            failovers.join()
            core.resubmit_lost()  # what the last failover lost, cascade-core sends again
        client.set_ledger_faults()  # the last fault; from here on the system settles alone
        last_fault = time.monotonic()
        deadline = last_fault + args.quiet_timeout
        while not quiet(url) and time.monotonic() < deadline:
            time.sleep(1)
        quiet_after = time.monotonic() - last_fault
        chaos.stop_supervising()
        return report(
            Run(client, stack, url, nats_server.url, plan, chaos, answers, submitted),
            quiet_after,
            args.quiet_timeout,
            time.monotonic() - started,
            (failovers, core) if failovers else None,
        )
    finally:
        if probe:
            probe.stop()
        stack.stop()


@dataclass(frozen=True)
class Run:
    """What a soak ran against, and what it sent and did."""

    client: StackClient
    stack: Stack
    url: str
    nats_url: str
    plan: Plan
    chaos: Chaos
    answers: Counter[int]
    submitted: int


def report(
    run: Run,
    quiet_after: float,
    quiet_timeout: float,
    wall: float,
    ha: tuple[Failovers, Core] | None,
) -> int:
    client, chaos, url = run.client, run.chaos, run.url
    api_errors = api_5xx_other_than_503(run.stack.workdir / "api.log")
    found = [
        *checks.money_checks(client, url),
        *checks.liveness_checks(url),
        checks.audit_replay(url),
        *checks.outbox_checks(url, run.nats_url),
        checks.Check(
            "worker exits other than the ones killed",
            chaos.unexpected_exits,
            chaos.unexpected_exits == 0,
        ),
        checks.Check("API 5xx other than 503", api_errors, api_errors == 0),
        checks.Check(
            "seconds to quiet after the last fault",
            f"{quiet_after:.0f}",
            quiet_after < min(quiet_timeout, 120),
        ),
        *(ha_checks(*ha, client, url) if ha else []),
    ]
    outcomes = checks.outcome_counts(url)
    manual = checks.manual_checks_by_cause(client, url)
    avoidable = sum(n for cause, n in manual.items() if not cause.endswith("order pending"))
    found.append(
        checks.Check("manual checks whose provider had settled", avoidable, avoidable == 0)
    )
    print()
    print(f"{'figure':<64} {'value':>14}")
    for name, value in [
        ("withdrawals submitted", run.submitted),
        *((f"  {k}", v) for k, v in outcomes.items()),
        ("API answers (every try; 0: no answer)", dict(sorted(run.answers.items()))),
        ("workers SIGKILLed (and replaced)", chaos.kills),
        ("API SIGKILLed mid-step (and restarted)", chaos.api_kills),
        ("kills dropped (due while a database fault held the schedule)", chaos.kills_skipped),
        ("PostgreSQL crash-restarts" if ha is None else "primary failovers", chaos.pg_restarts),
        *(ha_figures(*ha) if ha else []),
        ("nats-server outage, s", run.plan.nats_down_s),
        ("stale or duplicate webhooks resent", chaos.webhooks_resent),
        ("cancels by cascade-core", chaos.cancels),
        *((f"manual check: {cause}", n) for cause, n in manual.items()),
        ("wall time, s", f"{wall:.0f}"),
    ]:
        print(f"{name:<64} {value!s:>14}")
    print()
    for check in found:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name:<59} {check.value!s:>14}")
    failed = [c.name for c in found if not c.ok]
    verdict = "PASSED" if not failed else "FAILED: " + "; ".join(failed)
    print(f"\nsoak seed {run.plan.seed}, {run.submitted} withdrawals: {verdict}")
    return 0 if not failed else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="about two minutes (make test)")
    parser.add_argument("--count", type=int, default=2000, help="withdrawals (long run)")
    parser.add_argument("--spread", type=float, default=240.0, help="seconds to submit over")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--quiet-timeout", type=float, default=300.0)
    parser.add_argument("--market", default=str(MARKET_FILE))
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
