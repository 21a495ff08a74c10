"""A small `make demo`, end to end: its own stack, all three policies, its invariants."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from devstack.embedded import database_url
from sandbox.demo_report import PolicyStats, comparison_table
from sandbox.stack import ROOT


def test_small_demo_reconciles_and_settles_every_withdrawal(tmp_path: Path) -> None:
    name = f"ps_test_{os.getpid()}_demo"
    report = tmp_path / "report.html"
    done = run_demo(
        tmp_path / "data", name, "--report", str(report), "--json", str(tmp_path / "figures.json")
    )
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "ledger reconciliation: OK, 0 discrepancies" in done.stdout
        rows = {
            m.group(1): m.group(0)
            for m in re.finditer(r"^(health_cascade|cascade|single_shot)\s.*$", done.stdout, re.M)
        }
        assert set(rows) == {"cascade", "health_cascade", "single_shot"}
        figures = json.loads((tmp_path / "figures.json").read_text())
        assert set(figures) == {"seed", "scenario", "market", "policies"}
        assert figures["scenario"] == "default"
        assert re.search(r"^case study\s+10-20%\s+50-60%\s+3-5x\s+3-5%\s+0$", done.stdout, re.M)
        assert set(figures["policies"]) == {"single_shot", "cascade", "health_cascade"}
        for policy in figures["policies"].values():
            assert set(policy) >= {
                "withdrawals",
                "success_rate",
                "manual_rate",
                "attempts_per_withdrawal",
                "p50_final_s",
                "p95_final_s",
                "p50_success_s",
                "p95_success_s",
                "discrepancies",
            }
            assert (policy["withdrawals"], policy["discrepancies"]) == (8, 0)
        page = report.read_text()
        assert "Single-shot vs durable cascade" in page and "Beside the case study" in page
        url = make_conninfo(database_url(), dbname=name)
        with psycopg.connect(url) as conn:
            unsettled = conn.execute(
                "SELECT count(*) FROM order_queues q WHERE status = 'ACTIVE' AND NOT EXISTS"
                " (SELECT 1 FROM order_tasks t WHERE t.queue_id = q.id"
                "  AND t.status = 'MANUAL_CHECK')"
            ).fetchone()
            policies = conn.execute(
                "SELECT policy, count(*) FROM order_queues GROUP BY 1 ORDER BY 1"
            ).fetchall()
            single_tasks = conn.execute(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM order_tasks t JOIN order_queues q"
                " ON q.id = t.queue_id WHERE q.policy = 'single_shot' GROUP BY q.id) x"
            ).fetchone()
        assert unsettled == (0,)  # each withdrawal final or waiting in manual check
        assert policies == [("cascade", 8), ("health_cascade", 8), ("single_shot", 8)]
        assert single_tasks == (1,)  # single-shot never tried a second provider
    finally:
        with psycopg.connect(database_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_case_studys_figures_are_printed_beside_the_runs() -> None:
    def stats(policy: str, success: float, manual: float = 0.02) -> PolicyStats:
        return PolicyStats(policy, 100, success, manual, 1 - success - manual, 0, 2, 1, 2, 1, 2)

    within = comparison_table([stats("cascade", 0.6), stats("single_shot", 0.15)])
    assert within.splitlines()[1:] == [
        "case study          10-20%   50-60%   3-5x    3-5%             0",
        "this run             15.0%    60.0%   4.0x    2.0%             0",
        "within the case study's figures",
    ]
    outage = [stats("cascade", 0.52), stats("health_cascade", 0.52), stats("single_shot", 0.04)]
    assert comparison_table(outage).splitlines()[-1] == (
        "outside the case study's figures: single-shot, this run lift, health-aware lift"
    )


OUTCOMES = """
SELECT q.order_id, q.policy, q.status::text,
       (SELECT t.provider FROM order_tasks t WHERE t.queue_id = q.id AND t.status = 'SUCCEEDED'),
       (SELECT count(DISTINCT e.task_id) FROM order_task_events e
        WHERE e.queue_id = q.id AND e.event_type = 'start')
FROM order_queues q ORDER BY q.order_id
"""


def test_the_same_seed_gives_the_same_outcome_for_every_withdrawal(tmp_path: Path) -> None:
    runs = []
    for attempt in (1, 2):
        name = f"ps_test_{os.getpid()}_repeat{attempt}"
        report = str(tmp_path / f"r{attempt}.html")
        done = run_demo(tmp_path / f"data{attempt}", name, "--seed", "5", "--report", report)
        try:
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            with psycopg.connect(make_conninfo(database_url(), dbname=name)) as conn:
                runs.append(conn.execute(OUTCOMES).fetchall())
        finally:
            with psycopg.connect(database_url(), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    first, second = runs
    assert len(first) == 24
    assert first == second  # policy, final status, provider that paid, attempts
    assert {row[2] for row in first} >= {"COMPLETED", "FAILED"}  # not trivially equal


def run_demo(data: Path, database: str, *options: str) -> subprocess.CompletedProcess[str]:
    """A small demo (24 withdrawals over 3 s) on its own database, nats store and logs."""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env |= {"PAYMENT_DATA_DIR": str(data), "DATABASE_URL": database_url()}
    command = ["--count", "24", "--spread", "3", "--database", database, "--timeout", "120"]
    return subprocess.run(
        [sys.executable, "-m", "sandbox.demo", *command, *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
