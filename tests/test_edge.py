"""The HTTP edge against the real stack: a provider speaks only for its own orders,
no input reaches a 500, and every error is the JSON error object."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from activities.standard_webhooks import signed_headers
from sandbox.client import StackClient
from sandbox.stack import wait_until
from tests.test_observability import delta, scrape

JSON = {"Content-Type": "application/json"}


def post_webhook(
    client: StackClient, provider: str, signer: str, body: bytes, content_type: str | None = None
) -> tuple[httpx.Response, str]:
    """POST to /webhooks/{provider}, validly signed with `signer`'s secret."""
    webhook_id = f"msg_{uuid.uuid4().hex}"
    headers = signed_headers(client.stack.secrets[signer], webhook_id, int(time.time()), body)
    headers["Content-Type"] = content_type or "application/json"
    url = f"{client.stack.api_url}/webhooks/{provider}"
    return httpx.post(url, content=body, headers=headers), webhook_id


def order_update(task_id: str, status: str, order_id: str = "ord_any") -> bytes:
    data = {"id": order_id, "reference": task_id, "status": status}
    return json.dumps({"type": "order.updated", "data": data}).encode()


def inbox_outcome(url: str, webhook_id: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT outcome FROM webhook_inbox WHERE webhook_id = %s AND processed_at IS NOT NULL",
            (webhook_id,),
        ).fetchone()
    return row[0] if row else None


def snapshot(client: StackClient, url: str, queue_id: str) -> dict[str, Any]:
    """What a refused observation must not change: the tasks, the ledger, the transitions."""
    view = client.withdrawal(queue_id)
    with psycopg.connect(url) as conn:
        transitions = conn.execute(
            "SELECT count(*) FROM order_task_events WHERE queue_id = %s"
            " AND from_state IS DISTINCT FROM to_state",
            (queue_id,),
        ).fetchone()
    ops = client.ledger_ops()
    return {
        "tasks": [
            {k: t[k] for k in ("status", "funds", "target", "version", "provider_ref")}
            for t in view["tasks"]
        ],
        "ledger": {t["id"]: ops.get(t["id"], []) for t in view["tasks"]},
        "transitions": transitions,
    }


def executing_at_alpha(client: StackClient) -> tuple[str, dict[str, Any]]:
    client.set_provider("alpha", behaviour="never_answers")
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    return queue_id, client.withdrawal(queue_id)["tasks"][0]


# A provider speaks only for its own orders ------------------------------------------------
def test_webhook_signed_by_another_provider_changes_nothing(
    client: StackClient, migrated_url: str
) -> None:
    queue_id, task = executing_at_alpha(client)
    before, metrics_before = snapshot(client, migrated_url, queue_id), scrape(client)
    answers = [
        post_webhook(client, "beta", "beta", order_update(task["id"], status, task["provider_ref"]))
        for status in ("succeeded", "failed")
    ]
    assert [a.status_code for a, _ in answers] == [202, 202]  # verified and stored, then refused
    for _, webhook_id in answers:
        outcome = wait_until(lambda w=webhook_id: inbox_outcome(migrated_url, w), 10, "the webhook")
        assert outcome == "wrong_provider"
    assert snapshot(client, migrated_url, queue_id) == before
    refused = delta(
        scrape(client),
        metrics_before,
        "webhook_outcomes_total",
        provider="beta",
        outcome="wrong_provider",
    )
    assert refused == 2
    attention = client.ops.get("/ops/v1/attention").json()["withdrawals"]
    assert any(w["id"] == queue_id and "wrong_provider" in w["attention_reason"] for w in attention)
    # alpha's own word still counts: the task settles as usual
    client.send_webhook("alpha", task["id"], "succeeded")
    assert [t["status"] for t in client.wait_final(queue_id)["tasks"]] == ["SUCCEEDED", "CANCELLED"]


def test_webhook_naming_another_provider_order_is_a_conflict(
    client: StackClient, migrated_url: str
) -> None:
    queue_id, task = executing_at_alpha(client)
    before = snapshot(client, migrated_url, queue_id)
    forged, webhook_id = post_webhook(
        client, "alpha", "alpha", order_update(task["id"], "succeeded", "ord_someone_else")
    )
    assert forged.status_code == 202
    outcome = wait_until(lambda: inbox_outcome(migrated_url, webhook_id), 10, "the webhook")
    assert outcome == "provider_conflict"
    assert snapshot(client, migrated_url, queue_id) == before
    client.send_webhook("alpha", task["id"], "failed")  # the real order's own answer
    assert [t["status"] for t in client.wait_final(queue_id)["tasks"]][0] == "FAILED"


def test_status_answer_about_another_order_is_refused_and_polling_goes_on(
    client: StackClient, migrated_url: str
) -> None:
    client.set_provider("poller", behaviour="polling_only", webhook_delay_ms=1500)
    queue_id = client.submit(["poller", "beta"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    task = client.withdrawal(queue_id)["tasks"][0]
    client.rename_provider_order("poller", task["id"], "ord_renamed")

    def conflicts() -> int:
        return sum(e["event_type"] == "provider_conflict" for e in client.events(queue_id))

    wait_until(lambda: conflicts() >= 1, 10, "a refused status answer")
    order = client.provider_orders()[task["id"]]
    wait_until(lambda: client.provider_orders()[task["id"]]["status"] == "succeeded", 10, "payout")
    seen = conflicts()
    wait_until(lambda: conflicts() > seen, 10, "a refused answer after the payout")
    now = client.withdrawal(queue_id)["tasks"][0]
    assert (now["status"], now["funds"], now["target"]) == ("EXECUTING", "FROZEN", None)
    assert client.ledger_ops()[task["id"]] == ["freeze"]
    # once the provider answers about our order again, polling (still going) settles it
    client.rename_provider_order("poller", task["id"], task["provider_ref"])
    assert order["id"] == "ord_renamed"
    assert client.wait_final(queue_id)["tasks"][0]["status"] == "SUCCEEDED"
