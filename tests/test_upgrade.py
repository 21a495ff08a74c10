"""A deploy with money in flight: the release before migrations runs withdrawals
into every waiting state, is killed mid-step, the migrations are applied, the
new code starts, and every withdrawal finishes correctly with the ledger agreeing.

The old processes are the release's real code (tests/release.py), started on an
empty database exactly as that release started: applying its own schema.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.embedded import PROJECT_ROOT
from engine.migrations import migrate
from sandbox.client import StackClient
from sandbox.servers import NatsServer
from sandbox.stack import ProviderSpec, Stack, wait_until
from tests.conftest import FAST_TIMING, assert_ledger_matches_every_task, fresh_database
from tests.release import extract_release

# alpha never answers (EXECUTING, waiting for a webhook); tmo times out (ambiguous:
# RECHECKING, its first status check 10 s away); sla passes its webhook SLA
# (MANUAL_CHECK); slow hangs on create while the old processes are killed (CREATING
# with money frozen); beta pays.
TIMINGS = {
    "alpha": FAST_TIMING,
    "tmo": {**FAST_TIMING, "recheck_base_s": 10.0},
    "sla": {**FAST_TIMING, "webhook_sla_s": 1.0},
    "slow": FAST_TIMING,
    "beta": FAST_TIMING,
}
BEHAVIOURS = {
    "alpha": "never_answers",
    "tmo": "timeout",
    "sla": "never_answers",
    "slow": "timeout",
    "beta": "instant",
}


@pytest.fixture
def old_stack(nats_server: NatsServer, tmp_path: Path) -> Iterator[Stack]:
    release = extract_release(tmp_path / "release")
    specs = [ProviderSpec(n, behaviour=BEHAVIOURS[n], timing=t) for n, t in TIMINGS.items()]
    with fresh_database("_upgrade") as url:
        stack = Stack(url, tmp_path / "stack", specs, nats_url=nats_server.url)
        stack.service_root = release
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


def test_withdrawals_in_flight_finish_across_the_upgrade(old_stack: Stack) -> None:
    client, url = StackClient(old_stack), old_stack.database_url
    executing = submit(client, ["alpha", "beta"], "EXECUTING")
    rechecking = submit(client, ["tmo", "beta"], "RECHECKING")
    manual = submit(client, ["sla", "beta"], "MANUAL_CHECK")
    creating = client.submit(["slow", "beta"]).json()["id"]
    wait_until(lambda: create_call_in_flight(url, creating), 30, "the create call at slow")
    old_stack.stop_services(signal.SIGKILL)  # the deploy kills them mid-step

    assert first_task(url, creating)[:2] == ("CREATING", "FROZEN")
    assert first_task(url, executing)[:2] == ("EXECUTING", "FROZEN")
    assert first_task(url, rechecking) == ("RECHECKING", "FROZEN", 1)  # its timer waits
    assert first_task(url, manual)[:2] == ("MANUAL_CHECK", "FROZEN")
    refused = check_new_worker(old_stack)
    assert refused.returncode != 0 and "make migrate" in refused.stderr, refused.stderr

    migrate(url)
    client.set_provider("slow", behaviour="instant", webhook_delay_ms=100)
    old_stack.service_root = PROJECT_ROOT
    old_stack.start_services()
    client.send_webhook("alpha", task_id(client, executing), "succeeded")
    proposed = client.ops.post(
        f"/ops/v1/tasks/{task_id(client, manual)}/resolve",
        json={"outcome": "positive", "reason": "paid per the statement"},
    )
    assert proposed.status_code == 202, proposed.text  # four-eyes: bob approves ana's
    approval = f"/ops/v1/approvals/{proposed.json()['proposal']['id']}/approve"
    resolved = client.person("bob").post(approval, json={})
    assert resolved.status_code == 200, resolved.text

    expected = {
        executing: ["SUCCEEDED", "CANCELLED"],
        rechecking: ["FAILED", "SUCCEEDED"],  # no order at tmo: released, beta paid
        manual: ["SUCCEEDED", "CANCELLED"],
        creating: ["SUCCEEDED", "CANCELLED"],  # the lost create call sent again
    }
    for queue_id, statuses in expected.items():
        final = client.wait_final(queue_id, timeout=60)
        assert final["status"] == "COMPLETED", final
        assert [t["status"] for t in final["tasks"]] == statuses, final
    with psycopg.connect(url) as conn:
        versions = conn.execute("SELECT DISTINCT workflow_version FROM order_queues").fetchall()
    assert versions == [(1,)]  # all started on the only version the release had
    assert_ledger_matches_every_task(client, url)
    reconcile = subprocess.run(
        [sys.executable, "-m", "service.ops", "reconcile"],
        cwd=PROJECT_ROOT,
        env=old_stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    assert "ledger drift: 0" in reconcile.stderr


def submit(client: StackClient, cascade: list[str], status: str) -> str:
    queue_id: str = client.submit(cascade).json()["id"]
    client.wait_task_status(queue_id, 0, status)
    return queue_id


def create_call_in_flight(url: str, queue_id: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT status = 'CREATING' AND funds = 'FROZEN' AND order_submitted"
            " FROM order_tasks WHERE queue_id = %s AND position = 0",
            (queue_id,),
        ).fetchone()
    return bool(row and row[0])


def first_task(url: str, queue_id: str) -> tuple[Any, ...]:
    """(status, funds, timers pending) of the withdrawal's first task."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT t.status::text, t.funds::text,"
            " (SELECT count(*) FROM timers WHERE task_id = t.id AND kind LIKE 'recheck%%')"
            " FROM order_tasks t WHERE queue_id = %s AND position = 0",
            (queue_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def task_id(client: StackClient, queue_id: str) -> str:
    return str(client.withdrawal(queue_id)["tasks"][0]["id"])


def check_new_worker(stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "worker.py", "--check"],
        cwd=PROJECT_ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
