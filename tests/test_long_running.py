"""Long-running paths: ambiguity and rechecks, SLA timers, polling, manual checks,
webhooks in any order, cancellation and dead letters. Real PostgreSQL, real sandbox."""

from __future__ import annotations

from typing import Any

import psycopg

from sandbox.client import StackClient
from sandbox.stack import wait_until


def transitions(client: StackClient, queue_id: str, position: int) -> list[tuple[str, str]]:
    task_id = client.withdrawal(queue_id)["tasks"][position]["id"]
    return [
        (e["from_state"], e["to_state"])
        for e in client.events(queue_id)
        if e["task_id"] == task_id and e["from_state"] != e["to_state"]
    ]


def statuses(view: dict[str, Any]) -> list[str]:
    return [t["status"] for t in view["tasks"]]


# Ambiguous creation ------------------------------------------------------------------------
def test_ambiguous_create_then_recheck_finds_the_order(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="error_5xx_after_create", webhook_delay_ms=60_000)
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    assert transitions(client, queue_id, 0)[-3:] == [
        ("CREATING", "NEGATIVE_EVAL"),
        ("NEGATIVE_EVAL", "RECHECKING"),
        ("RECHECKING", "EXECUTING"),
    ]
    task = client.withdrawal(queue_id)["tasks"][0]
    client.send_webhook("alpha", task["id"], "succeeded")
    view = client.wait_final(queue_id)
    assert statuses(view) == ["SUCCEEDED", "CANCELLED"]
    assert client.provider_orders()[task["id"]]["creates"] == 1


def test_ambiguous_create_with_no_order_fails_and_moves_on(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="error_5xx")
    view = client.wait_final(client.submit(["alpha", "beta"]).json()["id"])
    assert statuses(view) == ["FAILED", "SUCCEEDED"]
    assert view["tasks"][0]["last_reason"] == "no_order_at_provider"
    assert ("RECHECKING", "FAILED") in transitions(client, view["id"], 0)


def _to_manual_check(client: StackClient) -> tuple[str, dict[str, Any]]:
    client.set_provider("alpha", behaviour="blackout")
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    client.wait_task_status(queue_id, 0, "MANUAL_CHECK", timeout=30)
    task = client.withdrawal(queue_id)["tasks"][0]
    assert task["recheck_attempts"] == 3  # FAST_TIMING: 3 attempts, then a person
    listed = client.ops.get("/ops/v1/manual-checks").json()["tasks"]
    assert task["id"] in [t["task_id"] for t in listed]
    return queue_id, task


def test_attempts_exhausted_then_manual_positive_commits(client: StackClient) -> None:
    queue_id, task = _to_manual_check(client)
    body = {"outcome": "positive", "reason": "provider confirmed by phone"}
    response = client.ops.post(f"/ops/v1/tasks/{task['id']}/resolve", json=body)
    assert response.status_code == 202, response.text  # four-eyes: a proposal (ana)
    proposal_id = response.json()["proposal"]["id"]
    approved = client.person("bob").post(f"/ops/v1/approvals/{proposal_id}/approve", json={})
    assert approved.status_code == 200, approved.text
    view = client.wait_final(queue_id)
    assert statuses(view) == ["SUCCEEDED", "CANCELLED"]
    assert client.ledger_ops()[task["id"]] == ["freeze", "commit"]
    decision = [e for e in client.events(queue_id) if e["event_type"] == "manual_resolved"]
    bob = f"person:bob@example.com (sub bob at {client.stack.issuer_url})"
    assert decision[0]["actor"] == bob  # the approver applied what ana proposed
    assert decision[0]["payload"]["positive"] is True


def test_attempts_exhausted_then_manual_negative_releases_and_moves_on(
    client: StackClient,
) -> None:
    queue_id, task = _to_manual_check(client)
    body = {"outcome": "negative", "operator": "ana", "reason": "provider has no record"}
    assert client.ops.post(f"/ops/v1/tasks/{task['id']}/resolve", json=body).status_code == 200
    view = client.wait_final(queue_id)
    assert statuses(view) == ["FAILED", "SUCCEEDED"]
    assert client.ledger_ops()[task["id"]] == ["freeze", "rollback"]


def test_ops_api_has_its_own_tokens_and_refuses_what_does_not_apply(
    client: StackClient,
) -> None:
    assert client.api.get("/ops/v1/manual-checks").status_code == 401  # cascade-core's token
    view = client.wait_final(client.submit(["alpha"]).json()["id"])
    body = {"outcome": "positive", "operator": "ana", "reason": "x"}
    done = client.ops.post(f"/ops/v1/tasks/{view['tasks'][0]['id']}/resolve", json=body)
    assert (done.status_code, done.json()["error"]["code"]) == (409, "not_allowed")
    assert client.ops.post("/ops/v1/tasks/nope/resolve", json=body).status_code == 404
    bad = client.ops.post(f"/ops/v1/tasks/{view['tasks'][0]['id']}/resolve", json={})
    assert bad.status_code == 422


# Timers -------------------------------------------------------------------------------
def test_webhook_timeout_checks_status_once_then_manual_check(client: StackClient) -> None:
    client.set_provider("sla", behaviour="never_answers")
    queue_id = client.submit(["sla", "beta"]).json()["id"]
    client.wait_task_status(queue_id, 0, "MANUAL_CHECK", timeout=15)
    task = client.withdrawal(queue_id)["tasks"][0]
    assert task["last_reason"] == "no_final_status_after_sla"
    assert client.withdrawal(queue_id)["tasks"][1]["status"] == "PENDING"  # never moved on


def test_polling_fallback_completes_a_provider_without_webhooks(client: StackClient) -> None:
    client.set_provider("poller", behaviour="polling_only", webhook_delay_ms=700)
    view = client.wait_final(client.submit(["poller", "beta"]).json()["id"], timeout=20)
    assert statuses(view) == ["SUCCEEDED", "CANCELLED"]


# Webhooks in any order and number ----------------------------------------------------------
def test_duplicate_and_out_of_order_webhooks_converge(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="never_answers")
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    task_id = client.withdrawal(queue_id)["tasks"][0]["id"]
    client.send_webhook("alpha", task_id, "pending")
    client.send_webhook("alpha", task_id, "succeeded")
    client.send_webhook("alpha", task_id, "succeeded")  # a duplicate with a new webhook-id
    client.send_webhook("alpha", task_id, "pending")  # late and stale
    view = client.wait_final(queue_id)
    assert statuses(view) == ["SUCCEEDED", "CANCELLED"]
    assert client.ledger_ops()[task_id] == ["freeze", "commit"]
    assert client.withdrawal(queue_id) == view
    ops = client.ops.get("/ops/v1/attention").json()["withdrawals"]
    assert queue_id not in [w["id"] for w in ops]  # nothing contradicted anything


def test_early_webhooks_converge(client: StackClient) -> None:
    # delay 0: the webhook races the create call's answer
    client.set_provider("alpha", behaviour="instant", webhook_delay_ms=0)
    ids = [client.submit(["alpha", "beta"]).json()["id"] for _ in range(6)]
    for queue_id in ids:
        view = client.wait_final(queue_id)
        assert statuses(view) == ["SUCCEEDED", "CANCELLED"]
        assert client.ledger_ops()[view["tasks"][0]["id"]] == ["freeze", "commit"]


def test_contradicting_webhook_raises_a_conflict_and_moves_no_money(
    client: StackClient, migrated_url: str
) -> None:
    client.set_provider("alpha", behaviour="decline")
    client.set_provider("beta", behaviour="accept_then_fail", webhook_delay_ms=100)
    view = client.wait_final(client.submit(["alpha", "beta", "gamma"]).json()["id"])
    failed = view["tasks"][1]
    assert failed["status"] == "FAILED"
    client.send_webhook("beta", failed["id"], "succeeded")  # success after FAILED
    wait_until(
        lambda: any(e["event_type"] == "provider_conflict" for e in client.events(view["id"])),
        10,
        "the conflict event",
    )
    after = client.withdrawal(view["id"])
    assert statuses(after) == statuses(view)
    assert client.ledger_ops()[failed["id"]] == ["freeze", "rollback"]
    attention = client.ops.get("/ops/v1/attention").json()["withdrawals"]
    assert view["id"] in [w["id"] for w in attention]
    with psycopg.connect(migrated_url) as conn:
        subjects = conn.execute(
            "SELECT subject FROM outbox WHERE task_id = %s", (failed["id"],)
        ).fetchall()
    assert ("order.task.provider.conflict",) in subjects


# Cancellation -------------------------------------------------------------------------------
def test_cancel_withdrawal_with_order_at_provider_never_releases_blindly(
    client: StackClient,
) -> None:
    client.set_provider("alpha", behaviour="never_answers")
    queue_id = client.submit(["alpha", "beta", "gamma"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    response = client.api.post(f"/v1/withdrawals/{queue_id}/cancel", json={"reason": "user"})
    assert response.status_code == 202, response.text
    # The unstarted ones end once the ledger has voided their keys (version 3: no
    # timeline the database might have lost can have frozen them).
    wait_until(
        lambda: statuses(client.withdrawal(queue_id)) == ["EXECUTING", "CANCELLED", "CANCELLED"],
        10,
        "the unstarted tasks to be cancelled",
    )
    view = client.withdrawal(queue_id)
    assert view["status"] == "ACTIVE"  # the order at alpha may still pay out
    first = view["tasks"][0]
    assert (first["cancel_requested"], first["funds"]) == (True, "FROZEN")
    client.send_webhook("alpha", first["id"], "failed")
    final = client.wait_final(queue_id)
    assert final["status"] == "CANCELLED"  # and the cascade did not move on
    assert statuses(final) == ["FAILED", "CANCELLED", "CANCELLED"]
    ops = client.ledger_ops()
    assert ops[first["id"]] == ["freeze", "rollback"]
    assert all(ops[t["id"]] == ["void"] for t in final["tasks"][1:])  # voided, never frozen


def test_cancel_withdrawal_before_the_order_left_releases_the_freeze(
    client: StackClient,
) -> None:
    client.set_ledger_faults(latency_ms=1500)  # the freeze is in flight when we cancel
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    response = client.api.post(f"/v1/withdrawals/{queue_id}/cancel", json={})
    client.set_ledger_faults()
    assert response.status_code == 202, response.text
    final = client.wait_final(queue_id)
    assert (final["status"], statuses(final)) == ("CANCELLED", ["CANCELLED", "CANCELLED"])
    assert final["tasks"][0]["funds"] == "RELEASED"
    assert final["tasks"][0]["id"] not in client.provider_orders()  # nothing was ordered
    again = client.api.post(f"/v1/withdrawals/{queue_id}/cancel", json={})
    assert again.status_code == 409


def test_cancel_one_task_skips_that_provider_only(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="never_answers")
    queue_id = client.submit(["alpha", "beta", "gamma"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    tasks = client.withdrawal(queue_id)["tasks"]
    body = {"operator": "ana", "reason": "beta is under maintenance"}
    assert client.ops.post(f"/ops/v1/tasks/{tasks[1]['id']}/cancel", json=body).status_code == 200
    client.send_webhook("alpha", tasks[0]["id"], "failed")
    final = client.wait_final(queue_id)
    assert statuses(final) == ["FAILED", "CANCELLED", "SUCCEEDED"]
    assert client.ledger_ops()[tasks[1]["id"]] == ["void"]  # voided, never frozen


# Dead letters ------------------------------------------------------------------------------
def test_poison_job_reaches_dead_letters_and_is_replayed(
    client: StackClient, migrated_url: str
) -> None:
    client.set_provider("alpha", behaviour="never_answers")
    queue_id = client.submit(["alpha"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    task_id = client.withdrawal(queue_id)["tasks"][0]["id"]
    client.set_ledger_faults(error_rate=1.0)  # every commit attempt fails
    try:
        client.send_webhook("alpha", task_id, "succeeded")

        def dead_letter() -> dict[str, Any] | None:
            letters = client.ops.get("/ops/v1/dead-letters").json()["dead_letters"]
            return next((d for d in letters if d["task_id"] == task_id), None)

        letter = wait_until(dead_letter, 30, "the commit job to be dead-lettered", every=0.2)
        assert letter["args"]["activity"] == "commit"
        task = client.withdrawal(queue_id)["tasks"][0]
        assert (task["status"], task["target"], task["funds"]) == (
            "EXECUTING",
            "SUCCEEDED",
            "FROZEN",
        )  # money stays frozen until the replay
    finally:
        client.set_ledger_faults()
    with psycopg.connect(migrated_url) as conn:
        dlq = conn.execute(
            "SELECT count(*) FROM outbox WHERE subject = 'order.task.dlq' AND task_id = %s",
            (task_id,),
        ).fetchone()
    assert dlq == (1,)
    replay = client.ops.post(
        f"/ops/v1/dead-letters/{letter['id']}/replay", json={"operator": "ana"}
    )
    assert replay.status_code == 202, replay.text
    view = client.wait_final(queue_id)
    assert view["status"] == "COMPLETED"
    assert client.ledger_ops()[task_id] == ["freeze", "commit"]
    again = client.ops.post(f"/ops/v1/dead-letters/{letter['id']}/replay", json={"operator": "ana"})
    assert again.status_code == 404


def test_cancel_while_the_create_call_is_in_flight_still_finishes(
    client: StackClient, migrated_url: str
) -> None:
    """The cancel must not orphan the create call's answer (the task would hang)."""
    client.set_provider("alpha", behaviour="timeout")  # hangs past the 1.5 s client timeout
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    task_id = client.withdrawal(queue_id)["tasks"][0]["id"]

    def create_in_flight() -> bool:
        with psycopg.connect(migrated_url) as conn:
            # the create call is asked for and noted as sent: it runs right after
            # that commit, in the process that made it, and hangs at the provider
            row = conn.execute(
                "SELECT count(*) FROM order_tasks t WHERE t.id = %s"
                " AND t.activity = 'create_order' AND t.order_submitted"
                " AND t.status = 'CREATING'",
                (task_id,),
            ).fetchone()
        return row == (1,)

    wait_until(create_in_flight, 10, "the create call to be in flight")
    assert client.api.post(f"/v1/withdrawals/{queue_id}/cancel", json={}).status_code == 202
    final = client.wait_final(queue_id, timeout=30)
    assert (final["status"], statuses(final)) == ("CANCELLED", ["FAILED", "CANCELLED"])
    assert client.ledger_ops()[task_id] == ["freeze", "rollback"]
