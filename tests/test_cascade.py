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
