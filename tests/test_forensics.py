"""SQL forensics views and the ops command line, on real scenarios."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from sandbox import issuer
from sandbox.client import StackClient
from sandbox.soak_checks import money_checks
from sandbox.stack import ROOT, wait_until
from tests.conftest import executing_at_alpha


def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


def ops(
    client: StackClient, *args: str, person: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m service.ops`, as `person` (their access token in OPS_ACCESS_TOKEN)."""
    env = client.stack.env()
    if person is not None:
        env["OPS_ACCESS_TOKEN"] = issuer.access_token(client.stack.issuer_url, person)
    return subprocess.run(
        [sys.executable, "-m", "service.ops", "--json", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_timeline_view_and_command(client: StackClient, migrated_url: str) -> None:
    client.set_provider("alpha", behaviour="decline")
    view = client.wait_final(client.submit(["alpha", "beta"]).json()["id"])
    rows = query(
        migrated_url,
        "SELECT * FROM v_withdrawal_timeline WHERE queue_id = %s ORDER BY event_id",
        view["id"],
    )
    assert len(rows) == len(client.events(view["id"]))
    assert (rows[0]["provider"], rows[0]["from_state"], rows[0]["to_state"]) == (
        "alpha",
        "PENDING",
        "CREATING",
    )
    assert rows[-1]["event_type"] == "queue_completed"
    printed = ops(client, "timeline", view["order_id"])
    assert printed.returncode == 0, printed.stderr
    assert [r["event_id"] for r in json.loads(printed.stdout)] == [r["event_id"] for r in rows]


def test_stuck_and_dead_letter_views(client: StackClient, migrated_url: str) -> None:
    client.set_provider("alpha", behaviour="never_answers")
    queue_id = client.submit(["alpha"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    task_id = client.withdrawal(queue_id)["tasks"][0]["id"]
    client.set_ledger_faults(error_rate=1.0)
    try:
        client.send_webhook("alpha", task_id, "succeeded")  # the commit cannot get through
        dead = wait_until(
            lambda: query(migrated_url, "SELECT * FROM v_dead_letters WHERE task_id = %s", task_id),
            30,
            "the commit to be dead-lettered",
            every=0.2,
        )
        assert (dead[0]["task_status"], dead[0]["funds"]) == ("EXECUTING", "FROZEN")
        stuck = query(
            migrated_url, "SELECT * FROM stuck_tasks('0 seconds') WHERE task_id = %s", task_id
        )
        assert [r["reason"] for r in stuck] == ["settling: ledger call not finished"]
        assert query(migrated_url, "SELECT * FROM v_stuck_tasks WHERE task_id = %s", task_id) == []
        listed = ops(client, "dlq")
        assert task_id in listed.stdout
    finally:
        client.set_ledger_faults()
    replayed = ops(client, "replay", str(dead[0]["dead_letter_id"]), person="ana")
    assert replayed.returncode == 0, replayed.stderr
    assert client.wait_final(queue_id)["status"] == "COMPLETED"
    assert query(migrated_url, "SELECT * FROM v_dead_letters WHERE task_id = %s", task_id) == []


def test_manual_check_queue_and_resolve_command(client: StackClient, migrated_url: str) -> None:
    client.set_provider("alpha", behaviour="blackout")
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    client.wait_task_status(queue_id, 0, "MANUAL_CHECK", timeout=30)
    task_id = client.withdrawal(queue_id)["tasks"][0]["id"]
    waiting = query(
        migrated_url, "SELECT * FROM v_manual_check_queue WHERE queue_id = %s", queue_id
    )
    assert [r["task_id"] for r in waiting] == [uuid.UUID(task_id)]
    nobody = ops(client, "resolve", task_id, "negative", "--reason", "no order")
    assert nobody.returncode != 0 and "sign in" in nobody.stderr
    viewer = ops(client, "resolve", task_id, "negative", "--reason", "no order", person="vic")
    assert viewer.returncode != 0 and "lacks the resolver role" in viewer.stderr
    done = ops(client, "resolve", task_id, "negative", "--reason", "no order", person="ana")
    assert done.returncode == 0, done.stderr
    assert client.wait_final(queue_id)["tasks"][1]["status"] == "SUCCEEDED"
    (resolved,) = [e for e in client.events(queue_id) if e["event_type"] == "manual_resolved"]
    assert resolved["actor"] == f"person:ana@example.com (sub ana at {client.stack.issuer_url})"
    again = ops(client, "resolve", task_id, "negative", "--reason", "x", person="ana")
    assert again.returncode != 0 and "not allowed" in again.stderr


def test_provider_success_rates_per_hour(client: StackClient, migrated_url: str) -> None:
    def alpha() -> dict[str, int]:
        rows = query(
            migrated_url,
            "SELECT sum(attempts)::int AS a, sum(succeeded)::int AS s,"
            " sum(skipped)::int AS k FROM v_provider_success_hourly"
            " WHERE provider = 'alpha'",
        )
        return {k: v or 0 for k, v in rows[0].items()}

    before = alpha()
    client.set_provider("alpha", behaviour="decline")
    client.wait_final(client.submit(["alpha", "beta"]).json()["id"])
    client.set_provider("alpha", behaviour="instant")
    client.wait_final(client.submit(["alpha", "beta"]).json()["id"])
    after = alpha()
    assert {k: after[k] - before[k] for k in after} == {"a": 2, "s": 1, "k": 1}
    # the runbook's function says the same for the hours it covers (every row of this
    # session's stack is from the last 24)
    window = query(
        migrated_url,
        "SELECT sum(attempts)::int AS a, sum(succeeded)::int AS s, sum(skipped)::int AS k"
        " FROM provider_success_hourly('alpha', 24)",
    )
    assert window == [after]


def test_reconcile_reports_zero_drift_then_finds_planted_drift(
    client: StackClient, migrated_url: str
) -> None:
    client.set_provider("alpha", behaviour="never_answers")
    queue_id = client.submit(["alpha"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    wait_until(
        lambda: query(
            migrated_url,
            "SELECT 1 FROM order_tasks WHERE queue_id = %s AND activity_token IS NULL",
            queue_id,
        ),
        10,
        "the task to settle",
    )
    clean = ops(client, "reconcile")
    ours = [r for r in json.loads(clean.stdout or "[]") if r["queue_id"] is not None]
    assert ours == [], ours  # every task of every scenario so far agrees with the ledger
    orphan = str(uuid.uuid4())  # a hold the ledger has and we never asked for
    client.sandbox.post(
        f"/ledger/v1/holds/{orphan}/freeze",
        json={"provider": "alpha", "currency": "EUR", "amount": "1.00"},
    ).raise_for_status()
    found = ops(client, "reconcile")
    assert found.returncode == 1
    assert [r["drift"] for r in json.loads(found.stdout) if r["key"] == orphan] == [
        "hold unknown to payment-service"
    ]
    task_id = client.withdrawal(queue_id)["tasks"][0]["id"]
    with psycopg.connect(migrated_url, row_factory=dict_row) as conn:  # our side drifts...
        conn.execute("UPDATE order_tasks SET funds = 'RELEASED' WHERE id = %s", (task_id,))
        drift = conn.execute(
            "SELECT drift FROM v_ledger_drift WHERE key = %s", (task_id,)
        ).fetchall()
        conn.rollback()  # ...only inside this transaction
    assert [r["drift"] for r in drift] == ["funds RELEASED but ledger frozen"]


# The soak's outside checks (sandbox/soak_checks.py) can see drift ----------------------
def test_money_checks_see_a_hold_committed_behind_the_services_back(
    client: StackClient, migrated_url: str
) -> None:
    queue_id, task = executing_at_alpha(client)
    # cascade-core's ledger commits the hold without payment-service knowing
    client.sandbox.post(f"/ledger/v1/holds/{task['id']}/commit", json={}).raise_for_status()
    failing = {c.name for c in money_checks(client, migrated_url) if not c.ok}
    assert failing == {
        "holds out of step with the task's funds",
        "providers whose ledger sum differs",
    }
    client.send_webhook("alpha", task["id"], "succeeded")  # the service catches up
    client.wait_final(queue_id)
    assert all(c.ok for c in money_checks(client, migrated_url))


def test_an_ops_command_without_its_credential_names_the_variable(client: StackClient) -> None:
    env = {k: v for k, v in client.stack.env().items() if k != "LEDGER_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "service.ops", "reconcile"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "reconcile needs LEDGER_TOKEN" in done.stderr
    assert "Bearer" not in done.stderr and "Traceback" not in done.stderr


def test_json_and_token_are_read_before_or_after_the_subcommand() -> None:
    from service.ops import parser

    for argv in (
        ["--json", "--token", "t", "manual"],
        ["manual", "--json", "--token", "t"],
        ["--token", "t", "manual", "--json"],
        ["archive", "status", "--json", "--token", "t"],
    ):
        args = parser().parse_args(argv)
        assert (args.json, args.token) == (True, "t"), argv
    assert parser().parse_args(["manual"]).json is False
