"""The HTTP edge against the real stack: a provider speaks only for its own orders,
no input reaches a 500, and every error is the JSON error object."""

from __future__ import annotations

import functools
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
from tests import openapi_contract as contract
from tests.conftest import executing_at_alpha
from tests.test_observability import delta, scrape

JSON = {"Content-Type": "application/json"}


def post_webhook(
    client: StackClient,
    provider: str,
    signer: str,
    body: bytes,
    content_type: str | None = "application/json",
) -> tuple[httpx.Response, str]:
    """POST to /webhooks/{provider}, validly signed with `signer`'s secret."""
    webhook_id = f"msg_{uuid.uuid4().hex}"
    headers = signed_headers(client.stack.secrets[signer], webhook_id, int(time.time()), body)
    if content_type is not None:
        headers["Content-Type"] = content_type
    url = f"{client.stack.api_url}/webhooks/{provider}"
    response = httpx.post(url, content=body, headers=headers)
    contract.check(response)
    return response, webhook_id


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
        outcome = wait_until(functools.partial(inbox_outcome, migrated_url, webhook_id), 10, "it")
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
    assert client.wait_final(queue_id)["tasks"][0]["status"] == "FAILED"


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


# No input reaches a 500 -----------------------------------------------------------------------
def assert_error_object(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return dict(error)


NUL_PATHS = [
    ("GET", "/v1/withdrawals/%00", "api"),
    ("GET", "/v1/withdrawals/a%00b", "api"),
    ("GET", "/v1/withdrawals/%00/events", "api"),
    ("POST", "/v1/withdrawals/%00/cancel", "api"),
    ("POST", "/v1/withdrawals/a%00b/cancel", "api"),
    ("POST", "/ops/v1/withdrawals/%00/cancel", "ops"),
    ("POST", "/ops/v1/tasks/%00/resolve", "ops"),
    ("POST", "/ops/v1/tasks/%00/cancel", "ops"),
    ("POST", "/ops/v1/dead-letters/%00/replay", "ops"),
    ("POST", "/ops/v1/dead-letters/99999999999999999999999/replay", "ops"),
    ("POST", "/ops/v1/dead-letters/%D9%A1/replay", "ops"),  # an Arabic-Indic digit
    ("POST", "/webhooks/%00", "api"),
    ("POST", "/ops/v1/providers/%00/circuit", "ops"),
    ("POST", "/ops/v1/providers/nope/circuit", "ops"),
]
BODY = {"operator": "ana", "reason": "checked"}


@pytest.mark.parametrize(("method", "path", "token"), NUL_PATHS, ids=lambda v: str(v))
def test_unstorable_path_parameters_are_a_4xx(
    client: StackClient, method: str, path: str, token: str
) -> None:
    http = client.api if token == "api" else client.admin  # an admin may call them all
    body = {"operator": "ana", "reason": "checked"}  # a valid body: only the path is wrong
    if path.startswith("/v1/"):
        body = {"reason": "x"}
    elif path.endswith("/resolve"):
        body |= {"outcome": "negative"}
    elif path.endswith("/replay"):
        body = {"operator": "ana"}
    elif path.endswith("/circuit"):
        body |= {"state": "open"}
    response = http.request(method, path, json=body if method == "POST" else None)
    assert_error_object(response, 404)


UNSTORABLE_TEXT = ["a\x00b", "\ud800", "ok\udfff"]


@pytest.mark.parametrize("text", UNSTORABLE_TEXT, ids=["nul", "lone-high", "lone-low"])
def test_unstorable_text_in_bodies_is_a_422_naming_the_field(
    client: StackClient, migrated_url: str, text: str
) -> None:
    queue_id, task = executing_at_alpha(client)
    task_id = task["id"]
    before = snapshot(client, migrated_url, queue_id)
    # json.dumps writes "\u0000" and "\ud800" escapes, the way a client would send them
    calls = [
        (client.api, f"/v1/withdrawals/{queue_id}/cancel", {"reason": text}, "reason"),
        (client.ops, f"/ops/v1/withdrawals/{queue_id}/cancel", {**BODY, "reason": text}, "reason"),
        (
            client.ops,
            f"/ops/v1/tasks/{task_id}/cancel",
            {"operator": text, "reason": "r"},
            "operator",
        ),
        (
            client.ops,
            f"/ops/v1/tasks/{task_id}/resolve",
            {"outcome": "negative", "operator": "ana", "reason": text},
            "reason",
        ),
        (client.api, "/v1/withdrawals", {"order_id": "o", "merchant_id": text}, "merchant_id"),
        (client.api, "/v1/withdrawals", {text: 1}, ""),
    ]
    for http, path, payload, field in calls:
        response = http.post(path, content=json.dumps(payload).encode(), headers=JSON)
        error = assert_error_object(response, 422)
        assert any(field in d["field"] for d in error["details"]), error
    assert snapshot(client, migrated_url, queue_id) == before
    client.send_webhook("alpha", task_id, "succeeded")
    client.wait_final(queue_id)


# The `data` object of each validly signed body; %s is the task id.
POISON_DATA = {
    "nan": b'{"reference":"%s","status":"succeeded","x":NaN}',
    "-infinity": b'{"reference":"%s","status":"succeeded","x":-Infinity}',
    "lone-surrogate": b'{"reference":"%s","status":"succeeded","x":"\\ud800"}',
    "nul": b'{"reference":"%s\\u0000","status":"succeeded"}',
    "status-list": b'{"reference":"%s","status":["succeeded"]}',
    "status-null": b'{"reference":"%s","status":null}',
    "id-number": b'{"reference":"%s","status":"succeeded","id":7}',
    "data-list": b'["%s"]',
}


def poison_bodies(task_id: str) -> dict[str, bytes]:
    bodies = {
        name: b'{"type":"order.updated","data":' + data % task_id.encode() + b"}"
        for name, data in POISON_DATA.items()
    }
    good = order_update(task_id, "succeeded").decode()
    bodies["utf-16-bom"] = good.encode("utf-16")
    bodies["utf-16-le"] = good.encode("utf-16-le")
    bodies["utf-8-bom"] = b"\xef\xbb\xbf" + good.encode()
    return bodies


def test_validly_signed_poisonous_webhooks_are_a_400_and_never_stored(
    client: StackClient, migrated_url: str
) -> None:
    queue_id, task = executing_at_alpha(client)
    before = snapshot(client, migrated_url, queue_id)
    sent = []
    for name, body in poison_bodies(task["id"]).items():
        response, webhook_id = post_webhook(client, "alpha", "alpha", body)
        error = assert_error_object(response, 400)
        assert error["code"] == "webhook_rejected", (name, error)
        sent.append(webhook_id)
    with psycopg.connect(migrated_url) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM webhook_inbox WHERE webhook_id = ANY(%s)", (sent,)
        ).fetchone()
    assert stored == (0,)
    assert snapshot(client, migrated_url, queue_id) == before
    client.send_webhook("alpha", task["id"], "succeeded")
    client.wait_final(queue_id)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/xml", "application/json; charset=latin-1", "json"],
)
def test_json_routes_refuse_other_media_types(
    client: StackClient, migrated_url: str, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    order_id = f"ord-{uuid.uuid4().hex[:8]}"
    submission = {
        "order_id": order_id,
        "merchant_id": "m-1",
        "amount": "10.00",
        "currency": "EUR",
        "cascade": ["alpha"],
    }
    refused = client.api.post("/v1/withdrawals", content=json.dumps(submission), headers=headers)
    assert assert_error_object(refused, 415)["code"] == "unsupported_media_type"
    assert client.api.get(f"/v1/withdrawals/{order_id}").status_code == 404
    ops = client.ops.post("/ops/v1/withdrawals/x/cancel", content=json.dumps(BODY), headers=headers)
    assert_error_object(ops, 415)
    body = order_update(str(uuid.uuid4()), "succeeded")
    webhook, _ = post_webhook(client, "alpha", "alpha", body, content_type)
    assert_error_object(webhook, 415)


def test_json_with_utf8_charset_is_accepted(client: StackClient) -> None:
    headers = {"Content-Type": "application/json; charset=UTF-8"}
    body: dict[str, Any] = {"order_id": f"ord-{uuid.uuid4().hex[:8]}", "merchant_id": "m-1"}
    body |= {"amount": "1.00", "currency": "EUR", "cascade": ["alpha"]}
    response = client.api.post("/v1/withdrawals", content=json.dumps(body), headers=headers)
    assert response.status_code == 201
    client.wait_final(response.json()["id"])


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("POST", "/webhooks/alpha/", 404, "not_found"),
        ("GET", "/v1/withdrawals/", 404, "not_found"),
        ("DELETE", "/v1/withdrawals", 405, "method_not_allowed"),
        ("GET", "/webhooks/alpha", 405, "method_not_allowed"),
        ("PUT", "/ops/v1/manual-checks", 405, "method_not_allowed"),
        ("POST", "/metrics", 405, "method_not_allowed"),
    ],
)
def test_unknown_routes_and_wrong_methods_answer_the_error_object(
    client: StackClient, method: str, path: str, status: int, code: str
) -> None:
    response = client.api.request(method, path, follow_redirects=False)
    assert assert_error_object(response, status)["code"] == code
    if status == 405:
        assert response.headers["allow"]
