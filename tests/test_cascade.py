"""End-to-end cascade scenarios against real PostgreSQL and the real sandbox."""

from __future__ import annotations

from typing import Any

from sandbox.client import StackClient, expected_ledger_ops


def assert_ledger_matches(client: StackClient, view: dict[str, Any]) -> None:
    ops = client.ledger_ops()
    for task in view["tasks"]:
        seen = ops.get(task["id"], [])
        froze = "freeze" in seen
        assert seen == expected_ledger_ops(task, froze), (task, seen)


def test_success_on_first_provider(client: StackClient) -> None:
    response = client.submit(["alpha", "beta"])
    assert response.status_code == 201, response.text
    view = client.wait_final(response.json()["id"])
    assert view["status"] == "COMPLETED"
    assert [t["status"] for t in view["tasks"]] == ["SUCCEEDED", "CANCELLED"]
    assert_ledger_matches(client, view)
    assert client.provider_orders()[view["tasks"][0]["id"]]["creates"] == 1


def test_decline_then_next_provider_succeeds(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="decline")
    view = client.wait_final(client.submit(["alpha", "beta", "gamma"]).json()["id"])
    assert view["status"] == "COMPLETED"
    assert [t["status"] for t in view["tasks"]] == ["SKIPPED", "SUCCEEDED", "CANCELLED"]
    assert [t["funds"] for t in view["tasks"]] == ["RELEASED", "COMMITTED", "NONE"]
    assert_ledger_matches(client, view)


def test_every_provider_declines_fails_and_releases_every_freeze(client: StackClient) -> None:
    for name in ("alpha", "beta", "gamma"):
        client.set_provider(name, behaviour="decline")
    view = client.wait_final(client.submit(["alpha", "beta", "gamma"]).json()["id"])
    assert view["status"] == "FAILED"
    assert {t["status"] for t in view["tasks"]} == {"SKIPPED"}
    ops = client.ledger_ops()
    assert [ops[t["id"]] for t in view["tasks"]] == [["freeze", "rollback"]] * 3
    assert_ledger_matches(client, view)


def test_insufficient_balance_skips_with_nothing_frozen(client: StackClient) -> None:
    client.set_balance("alpha", "EUR", "5.00")
    try:
        view = client.wait_final(client.submit(["alpha", "beta"], amount="10.00").json()["id"])
    finally:
        client.set_balance("alpha", "EUR", "1000000.00")
    assert view["status"] == "COMPLETED"
    first, second = view["tasks"]
    assert (first["status"], first["funds"], first["last_reason"]) == (
        "SKIPPED",
        "NONE",
        "insufficient_balance",
    )
    assert first["id"] not in client.ledger_ops()
    assert first["id"] not in client.provider_orders()  # never ordered without money
    assert second["status"] == "SUCCEEDED"
    assert_ledger_matches(client, view)


def test_delayed_webhook_completes_the_task(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="delayed_webhook", webhook_delay_ms=400)
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    view = client.wait_final(queue_id)
    assert [t["status"] for t in view["tasks"]] == ["SUCCEEDED", "CANCELLED"]
    assert_ledger_matches(client, view)


def test_accept_then_fail_moves_on(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="accept_then_fail", webhook_delay_ms=200)
    view = client.wait_final(client.submit(["alpha", "beta"]).json()["id"])
    assert [t["status"] for t in view["tasks"]] == ["FAILED", "SUCCEEDED"]
    assert_ledger_matches(client, view)


def test_ledger_5xx_is_retried_without_moving_money_twice(client: StackClient) -> None:
    client.set_ledger_faults(error_rate=0.5, seed=7)
    try:
        view = client.wait_final(client.submit(["alpha", "beta"]).json()["id"], timeout=60)
    finally:
        client.set_ledger_faults()
    assert view["status"] == "COMPLETED"
    assert_ledger_matches(client, view)


def test_audit_timeline_records_every_transition(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="decline")
    view = client.wait_final(client.submit(["alpha", "beta"]).json()["id"])
    events = client.events(view["id"])
    first = [
        (e["from_state"], e["to_state"]) for e in events if e["task_id"] == view["tasks"][0]["id"]
    ]
    assert first == [
        ("PENDING", "CREATING"),
        ("CREATING", "CREATING"),  # funds frozen
        ("CREATING", "CREATING"),  # order submitting
        ("CREATING", "NEGATIVE_EVAL"),
        ("NEGATIVE_EVAL", "SKIPPED"),
    ]
    assert events[-1]["event_type"] == "queue_completed"
