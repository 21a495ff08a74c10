"""The HTTP edge: idempotent submission, strict validation, auth, webhook security."""

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
from tests.conftest import executing_at_alpha

JSON = {"Content-Type": "application/json"}


def test_identical_replay_returns_the_same_withdrawal(client: StackClient) -> None:
    order_id = f"ord-{uuid.uuid4().hex[:8]}"
    first = client.submit(["alpha"], order_id=order_id)
    replay = client.submit(["alpha"], order_id=order_id)
    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json()["id"] == first.json()["id"]
    client.wait_final(first.json()["id"])
    assert len([o for o in client.provider_orders().values()]) >= 1
    # the replay did not create a second cascade
    assert client.withdrawal(order_id)["tasks"][0]["id"] == first.json()["tasks"][0]["id"]


def test_same_order_id_with_a_different_body_is_a_409(client: StackClient) -> None:
    order_id = f"ord-{uuid.uuid4().hex[:8]}"
    assert client.submit(["alpha"], order_id=order_id, amount="10.00").status_code == 201
    conflict = client.submit(["alpha"], order_id=order_id, amount="11.00")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "order_id_conflict"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": "1e2"}, "amount"),
        ({"amount": " 5 "}, "amount"),
        ({"amount": "10.001"}, "amount"),
        ({"amount": "١٢٣"}, "amount"),
        ({"amount": 10}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"currency": "XXX"}, "currency"),
        ({"currency": "eur"}, "currency"),
        ({"cascade": []}, "cascade"),
        ({"cascade": ["alpha", "alpha"]}, "cascade"),
        ({"cascade": ["nope"]}, "cascade"),
        ({"order_id": ""}, "order_id"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_submissions_are_422_and_say_what_is_wrong(
    client: StackClient, change: dict[str, Any], field: str
) -> None:
    body = {
        "order_id": f"ord-{uuid.uuid4().hex[:8]}",
        "merchant_id": "m-1",
        "amount": "10.00",
        "currency": "EUR",
        "cascade": ["alpha"],
        **change,
    }
    response = client.api.post("/v1/withdrawals", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert any(field in d["field"] or field in d["message"] for d in error["details"]), error
    if body["order_id"]:  # and nothing was stored
        assert client.api.get(f"/v1/withdrawals/{body['order_id']}").status_code == 404


@pytest.mark.parametrize(
    ("amount", "currency", "says"),
    [
        ("1e2", "EUR", "without an exponent"),
        (1e2, "EUR", "valid string"),  # a JSON number, not a decimal string
        (" 5 ", "EUR", "spaces"),
        ("10.001", "EUR", "at most 2 decimals for EUR"),
        ("1.5", "JPY", "at most 0 decimals for JPY"),
        ("١٢٣", "EUR", "ASCII digits"),
        ("-5", "EUR", "sign"),
        ("0", "EUR", "greater than zero"),
        ("1e2", "XXX", "without an exponent"),  # an unknown currency: the shape still judged
    ],
)
def test_a_bad_amount_is_a_422_that_names_amount_and_says_why(
    client: StackClient, amount: object, currency: str, says: str
) -> None:
    body = {
        "order_id": f"ord-{uuid.uuid4().hex[:8]}",
        "merchant_id": "m-1",
        "amount": amount,
        "currency": currency,
        "cascade": ["alpha"],
    }
    response = client.api.post("/v1/withdrawals", json=body)
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    on_amount = [d["message"] for d in details if d["field"] == "amount"]
    assert len(on_amount) == 1, details
    assert says in on_amount[0], details
    assert str(amount) not in on_amount[0]  # the input is never echoed


def test_three_decimal_currency_is_accepted(client: StackClient) -> None:
    body = {
        "order_id": f"ord-{uuid.uuid4().hex[:8]}",
        "merchant_id": "m-1",
        "amount": "1.250",
        "currency": "KWD",
        "cascade": ["alpha"],
    }
    response = client.api.post("/v1/withdrawals", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == "1.250"


def test_malformed_and_oversized_bodies(client: StackClient) -> None:
    bad = client.api.post("/v1/withdrawals", content=b'{"amount": NaN}', headers=JSON)
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_json")
    deep = client.api.post("/v1/withdrawals", content=b"[" * 5000 + b"]" * 5000, headers=JSON)
    assert deep.status_code in (400, 413)
    big = client.api.post("/v1/withdrawals", content=b" " * (65 * 1024), headers=JSON)
    assert big.status_code == 413


def test_auth_is_required(stack: Any) -> None:
    anonymous = httpx.post(f"{stack.api_url}/v1/withdrawals", json={})
    wrong = httpx.get(f"{stack.api_url}/v1/withdrawals/x", headers={"Authorization": "Bearer no"})
    assert (anonymous.status_code, wrong.status_code) == (401, 401)
    assert anonymous.json()["error"]["code"] == "unauthorized"


# Webhooks -------------------------------------------------------------------------------
def _webhook(
    client: StackClient,
    task: dict[str, Any],
    *,
    secret: str,
    webhook_id: str,
    timestamp: int,
    status: str = "succeeded",
) -> httpx.Response:
    body = json.dumps(
        {
            "type": "order.updated",
            "data": {"id": task["provider_ref"], "reference": task["id"], "status": status},
        }
    ).encode()
    headers = signed_headers(secret, webhook_id, timestamp, body)
    return httpx.post(
        f"{client.stack.api_url}/webhooks/alpha", content=body, headers={**headers, **JSON}
    )


def test_forged_expired_and_malformed_webhooks_change_nothing(client: StackClient) -> None:
    queue_id, task = executing_at_alpha(client)
    real = client.stack.secrets["alpha"]
    forged_secret = "whsec_" + "QUJD" * 8
    now = int(time.time())
    forged = _webhook(client, task, secret=forged_secret, webhook_id="msg_f", timestamp=now)
    expired = _webhook(client, task, secret=real, webhook_id="msg_e", timestamp=now - 3600)
    future = _webhook(client, task, secret=real, webhook_id="msg_x", timestamp=now + 3600)
    assert [r.status_code for r in (forged, expired, future)] == [401, 401, 401]
    for headers in (
        {},
        {"webhook-id": "a", "webhook-timestamp": "x", "webhook-signature": "v1,@@"},
        {"webhook-id": "a", "webhook-timestamp": str(now), "webhook-signature": "junk"},
    ):
        response = httpx.post(
            f"{client.stack.api_url}/webhooks/alpha",
            content=b"\xff\xfe",
            headers={**headers, **JSON},
        )
        assert 400 <= response.status_code < 500, response.text
    after = client.withdrawal(queue_id)["tasks"][0]
    assert (after["status"], after["version"]) == ("EXECUTING", task["version"])


def test_replayed_webhook_is_a_no_op(client: StackClient, migrated_url: str) -> None:
    queue_id, task = executing_at_alpha(client)
    secret, now = client.stack.secrets["alpha"], int(time.time())
    first = _webhook(
        client, task, secret=secret, webhook_id="msg_replay_" + task["id"], timestamp=now
    )
    assert first.status_code == 202
    view = client.wait_final(queue_id)
    replay = _webhook(
        client, task, secret=secret, webhook_id="msg_replay_" + task["id"], timestamp=now
    )
    assert (replay.status_code, replay.json()["status"]) == (200, "duplicate")
    with psycopg.connect(migrated_url) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM webhook_inbox WHERE reference = %s", (task["id"],)
        ).fetchone()
    assert rows == (1,)
    assert client.withdrawal(queue_id) == view
    assert client.ledger_ops()[task["id"]] == ["freeze", "commit"]


def test_openapi_describes_every_route_method_and_path_parameter(stack: Any) -> None:
    from jsonschema import Draft202012Validator

    from service.api import ROUTES
    from service.api_keys_api import API_KEY_ROUTES
    from service.approvals_api import APPROVAL_ROUTES
    from service.config_api import CONFIG_ROUTES
    from service.ops_api import CONTROL_ROUTES
    from service.providers_api import PROVIDER_ROUTES

    document = httpx.get(f"{stack.api_url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    routes = [*ROUTES, *CONTROL_ROUTES, *PROVIDER_ROUTES, *API_KEY_ROUTES, *APPROVAL_ROUTES]
    routes += CONFIG_ROUTES  # the live configuration's, and restoring a cohort
    served = {(path, m.lower()) for path, _, methods in routes for m in methods}
    served.add(("/metrics", "get"))
    described = {(path, m) for path, ops in document["paths"].items() for m in ops}
    assert served == described
    for path, ops in document["paths"].items():
        names = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)
            assert "default" in op["responses"], (method, path)
            if "requestBody" in op:  # a JSON body can be invalid JSON, too large, or not JSON
                assert {"400", "413", "415"} <= set(op["responses"]), (method, path)
            for status, answer in op["responses"].items():
                for media, content in answer.get("content", {}).items():
                    # real 2xx schemas (this document itself excepted: it is OpenAPI's)
                    if (
                        media == "application/json"
                        and status.startswith("2")
                        and path != "/openapi.json"
                    ):
                        assert content["schema"] != {"type": "object"}, (method, path, status)
    # every schema in the document is itself valid JSON Schema
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
