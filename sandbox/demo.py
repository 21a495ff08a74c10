"""`make demo`: the cascade's lift over single-shot, on a simulated provider market.

Starts PostgreSQL and nats-server (embedded, unless DATABASE_URL / NATS_URL are
set), the sandbox (ledger, cascade-core callback, the market of a scenario:
config/markets/NAME.toml, sandbox/scenarios.py), the API and two workers. It
then submits a batch of withdrawals in triples with the same amount and the same
eligible cascade: one goes through the old single-shot path (merchant `legacy`,
gated by the rollout gate), one through the plain cascade (merchant `modern`)
and one through the health-aware cascade (merchant `health`), which tries a
provider whose circuit is open last. When every withdrawal is final or waiting for a
person, it prints a table per policy and the case study's figures beside its
own, reconciles the ledger, says what the cohort guard did (sandbox/demo_guard.py)
and writes an HTML report (and, with --json, the figures for a program).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from devstack.embedded import PROJECT_ROOT, data_dir, database_url, start_embedded_nats
from engine.migrations import migrate
from sandbox import demo_guard, demo_report, scenarios
from sandbox.client import StackClient, expected_ledger_ops
from sandbox.scenarios import eligible_cascade, market_env, market_specs
from sandbox.stack import Stack

# Each submitted triple: the same withdrawal under each rollout policy.
MERCHANTS = {"legacy": "single_shot", "modern": "cascade", "health": "health_cascade"}


def fresh_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    migrate(url)
    return url


def progress(url: str, total: int, started: float) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status <> 'ACTIVE'),"
            " count(*) FILTER (WHERE status = 'ACTIVE' AND EXISTS (SELECT 1 FROM order_tasks t"
            "   WHERE t.queue_id = q.id AND t.status = 'MANUAL_CHECK')) FROM order_queues q"
        ).fetchone()
    done, manual = (row[0], row[1]) if row else (0, 0)
    settled = done + manual
    bar = "#" * int(30 * settled / max(total, 1))
    line = (
        f"[{bar:<30}] {settled}/{total} settled ({done} final, {manual} manual)"
        f"  {time.monotonic() - started:5.1f}s"
    )
    if sys.stdout.isatty():
        print("\r" + line, end="", flush=True)
    else:
        print(line, flush=True)
    return settled, done


def submit_batch(
    client: StackClient, market: dict[str, Any], count: int, spread_s: float, rng: random.Random
) -> None:
    triples = max(count // len(MERCHANTS), 1)
    for i in range(triples):
        cascade = eligible_cascade(market, rng)
        amount = f"{rng.randint(5, 500)}.{rng.randint(0, 99):02d}"
        for merchant in MERCHANTS:
            response = client.api.post(
                "/v1/withdrawals",
                json={
                    "order_id": f"demo-{merchant}-{i:04d}",
                    "merchant_id": merchant,
                    "amount": amount,
                    "currency": "EUR",
                    "cascade": cascade,
                },
            )
            response.raise_for_status()
        if (i + 1) % max(triples // 10, 1) == 0 or i + 1 == triples:
            print(f"  submitted {(i + 1) * len(MERCHANTS)}/{triples * len(MERCHANTS)}", flush=True)
        time.sleep(spread_s / triples)


def run(args: argparse.Namespace) -> int:
    scenario = scenario_of(args)
    market = scenario.market
    rng = random.Random(args.seed)
    url = fresh_database(database_url(), args.database)
    nats_proc = None
    nats_url = os.environ.get("NATS_URL")
    if not nats_url:
        nats_proc, nats_url = start_embedded_nats(store=Path(data_dir()) / "demo-nats")
    workdir = Path(data_dir()) / "demo"
    rollout = workdir / "rollout.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("*.log"):  # each run's logs only, not every run's
        old.unlink()
    rollout.write_text(scenario.rollout_toml(MERCHANTS))
    stack = Stack(
        url,
        workdir,
        market_specs(market),
        workers=args.workers,
        nats_url=nats_url,
        market_seed=int(market.get("market_seed", 1)),
        worker_concurrency=16,
        extra_env={"ROLLOUT_FILE": str(rollout), **market_env(market), **scenario.demo_env()},
    )
    try:
        stack.start()
        print(
            f"stack up: API {stack.api_url}, sandbox {stack.sandbox_url}, "
            f"{args.workers} workers, logs in {workdir}"
        )
        return measure(stack, scenario, args, url, rng)
    finally:
        stack.stop()
        if nats_proc is not None:
            nats_proc.terminate()


def measure(
    stack: Stack,
    scenario: scenarios.Scenario,
    args: argparse.Namespace,
    url: str,
    rng: random.Random,
) -> int:
    client = StackClient(stack)
    market = scenario.market
    started = time.monotonic()
    total = max(args.count // len(MERCHANTS), 1) * len(MERCHANTS)
    print(f"scenario {scenario.name} ({scenario.path}): {scenario.demo.description or '-'}")
    print(
        f"submitting {total} withdrawals over {args.spread:.0f}s"
        " (a third each: single-shot, cascade, health-aware cascade)"
    )
    submit_batch(client, market, args.count, args.spread, rng)
    settled = wait_until_settled(url, total, started, args.timeout)
    if args.each:
        print_each(url)
    drifts = reconcile(client, url)
    drift = sum(drifts.values())
    stats, durations = demo_report.collect(url)
    stats = [replace(s, discrepancies=drifts.get(s.policy, 0)) for s in stats]
    compression = float(market.get("time_compression", 1))
    print()
    print(demo_report.table(stats, compression))
    verdict = "OK, 0 discrepancies" if drift == 0 else f"{drift} DISCREPANCIES"
    print(f"\nledger reconciliation: {verdict}")
    print("\nthe case study's figures beside this run's:")
    print(demo_report.comparison_table(stats))
    print("\n" + demo_guard.summary(url, compression))
    write_reports(args, scenario, stats, durations, compression, drift, total, started)
    return 0 if drift == 0 and settled >= total else 1


def wait_until_settled(url: str, total: int, started: float, timeout: float) -> int:
    """Shows progress until every withdrawal is final or with a person (or `timeout` s
    pass); how many are. A log gets a line every 5 s, not a terminal's 0.5 s redraws."""
    deadline = time.monotonic() + timeout
    settled, _ = progress(url, total, started)
    while settled < total and time.monotonic() <= deadline:
        time.sleep(0.5 if sys.stdout.isatty() else 5)
        settled, _ = progress(url, total, started)
    if sys.stdout.isatty():
        print()  # end the progress bar's line
    return settled


def write_reports(
    args: argparse.Namespace,
    scenario: scenarios.Scenario,
    stats: list[demo_report.PolicyStats],
    durations: dict[str, list[float]],
    compression: float,
    drift: int,
    total: int,
    started: float,
) -> None:
    """The HTML report, and with --json the per-policy figures for a program."""
    report = Path(args.report)
    demo_report.write_html(
        report,
        stats,
        durations,
        compression,
        drift,
        {
            "withdrawals": total,
            "seed": args.seed,
            "scenario": f"{scenario.name}: {scenario.demo.description or '-'}",
            "fault": scenario.demo.fault or "none",
            "market": str(scenario.path),
            "wall time": f"{time.monotonic() - started:.0f} s",
            "time compression": f"1 s = {compression:.0f} s real",
        },
    )
    print(f"report: {report}")
    if args.json:
        figures = {
            "seed": args.seed,
            "scenario": scenario.name,
            "market": str(scenario.path),
            "policies": {s.policy: s.to_json(compression) for s in stats},
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures: {args.json}")


def print_each(url: str) -> None:
    """Every withdrawal's path through its cascade, one line each."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT q.order_id, q.policy, q.status::text,"
            " string_agg(t.provider || ':' || t.status::text, ' -> ' ORDER BY t.position)"
            " FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id"
            " GROUP BY q.id ORDER BY q.order_id"
        ).fetchall()
    for order_id, policy, status, path in rows:
        print(f"{order_id:<20} {policy:<12} {status:<10} {path}")


def reconcile(client: StackClient, url: str) -> dict[str, int]:
    """Per policy, the tasks whose funds disagree with the ledger's holds (the
    sandbox's op log)."""
    ops = client.ledger_ops()
    with psycopg.connect(url) as conn:
        tasks = conn.execute(
            "SELECT t.id::text, t.funds::text, q.policy FROM order_tasks t"
            " JOIN order_queues q ON q.id = t.queue_id"
        ).fetchall()
    drifts: dict[str, int] = {}
    for task_id, funds, policy in tasks:
        seen = ops.get(task_id, [])
        wrong = seen != expected_ledger_ops({"funds": funds}, "freeze" in seen)
        drifts[policy] = drifts.get(policy, 0) + wrong
    return drifts


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module's text as written, and every option's default."""


def scenario_of(args: argparse.Namespace) -> scenarios.Scenario:
    """--market's file, else --scenario's (by name, under config/markets/)."""
    return scenarios.load(Path(args.market) if args.market else scenarios.resolve(args.scenario))


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    parser.add_argument("--count", type=int, default=300, help="withdrawals (a third per policy)")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds to submit over")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--seed", type=int, default=42, help="picks cascades and amounts (and so the outcomes)"
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for every withdrawal"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--scenario",
        default=scenarios.DEFAULT_SCENARIO,
        help=f"a market of config/markets/ by name: {', '.join(scenarios.names())}",
    )
    where.add_argument("--market", help="a market file of that shape, instead of a scenario")
    parser.add_argument("--database", default="payment_demo", help="recreated for each run")
    parser.add_argument("--each", action="store_true", help="print every withdrawal's path")
    parser.add_argument(
        "--report",
        default=str(PROJECT_ROOT / "reports" / "demo-report.html"),
        help="the HTML report",
    )
    parser.add_argument("--json", help="also write the per-policy figures here, as JSON")
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    try:
        scenario_of(args)  # a wrong name or a bad file: said before anything starts
    except scenarios.ScenarioError as exc:
        parser.error(str(exc))
    sys.exit(run(args))


if __name__ == "__main__":
    main()
