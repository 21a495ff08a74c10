"""API keys for cascade-core's API, managed by an admin (signed in at the stack's
OpenID issuer, sandbox/issuer.py) through the ops API, on two API processes."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from sandbox import issuer
from sandbox.servers import NatsServer
from sandbox.stack import API_TOKEN, ProviderSpec, Stack, wait_until
from tests.conftest import FAST_TIMING, own_stack
from tests.openapi_contract import hook

ALL = ["withdrawals:submit", "withdrawals:read", "withdrawals:cancel"]
SUBMIT_READ = ["withdrawals:submit", "withdrawals:read"]
REVOCATION_DEADLINE_S = 5.0


@pytest.fixture(scope="module")
def keyed(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two API processes on one port; alpha takes orders and never answers, so
    withdrawals stay in flight (a cancel would change them)."""
    specs = [ProviderSpec("alpha", behaviour="never_answers", timing=FAST_TIMING)]
    workdir = tmp_path_factory.mktemp("keys")
    env = {"API_PROCESSES": "2"}
    with own_stack("_keys", workdir, specs, nats_server.url, workers=1, extra_env=env) as stack:
        yield stack


def _client(stack: Stack, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.api_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        event_hooks={"response": [hook]},  # every answer against /openapi.json
    )


@pytest.fixture(scope="module")
def admin(keyed: Any) -> httpx.Client:
    return _client(keyed, issuer.access_token(keyed.issuer_url, "ada"))  # an admin


@pytest.fixture(scope="module")
def bootstrap(keyed: Any) -> httpx.Client:
    return _client(keyed, API_TOKEN)


def create_key(admin: httpx.Client, scopes: list[str], **spec: Any) -> tuple[str, dict[str, Any]]:
    answer = admin.post("/ops/v1/api-keys", json={"client": "core", "scopes": scopes, **spec})
    assert answer.status_code == 201, answer.text
    return answer.json()["secret"], answer.json()["key"]


def submit(api: httpx.Client, merchant: str = "m-1", order_id: str | None = None) -> httpx.Response:
    body = {
        "order_id": order_id or f"ord-{uuid.uuid4().hex[:12]}",
        "merchant_id": merchant,
        "amount": "10.00",
        "currency": "EUR",
        "cascade": ["alpha"],
    }
    return api.post("/v1/withdrawals", json=body)


def fresh_get(stack: Stack, key: str, path: str) -> httpx.Response:
    """On a new connection: whichever API process accepts it answers."""
    with _client(stack, key) as one_off:
        return one_off.get(path)


def test_an_admin_manages_keys_and_each_change_is_audited(keyed: Any, admin: httpx.Client) -> None:
    viewer = _client(keyed, issuer.access_token(keyed.issuer_url, "vic"))
    body = {"client": "core", "scopes": ALL}
    assert viewer.post("/ops/v1/api-keys", json=body).status_code == 403
    assert httpx.post(f"{keyed.api_url}/ops/v1/api-keys", json=body).status_code == 401
    secret, key = create_key(admin, ALL, merchants=["m-1"], rate_per_s=50.0)
    assert secret.startswith(f"psk_{key['prefix']}_") and key["state"] == "active"
    listed = {k["id"]: k for k in admin.get("/ops/v1/api-keys").json()["keys"]}
    assert listed[key["id"]]["merchants"] == ["m-1"]
    assert not {"secret", "hash"} & set(listed[key["id"]])
    revoked = admin.post(f"/ops/v1/api-keys/{key['id']}/revoke", json={"reason": "test"})
    assert (revoked.status_code, revoked.json()["state"]) == (200, "revoked")
    again = admin.post(f"/ops/v1/api-keys/{key['id']}/revoke", json={"reason": "test"})
    rotate = admin.post(f"/ops/v1/api-keys/{key['id']}/rotate", json={})
    missing = admin.post(f"/ops/v1/api-keys/{uuid.uuid4()}/revoke", json={"reason": "x"})
    assert (again.status_code, rotate.status_code, missing.status_code) == (409, 409, 404)
    with psycopg.connect(keyed.database_url) as conn:
        rows = conn.execute(
            "SELECT action, actor FROM api_key_events WHERE key_id = %s ORDER BY id", (key["id"],)
        ).fetchall()
    assert [action for action, _ in rows] == ["created", "revoked"]
    assert all("ada@example.com" in actor for _, actor in rows), rows


def test_a_revoked_key_is_refused_within_5_s_by_every_api_process(
    keyed: Any, admin: httpx.Client
) -> None:
    secret, key = create_key(admin, ALL)
    created = submit(_client(keyed, secret))
    assert created.status_code == 201, created.text
    path = f"/v1/withdrawals/{created.json()['id']}"
    assert all(fresh_get(keyed, secret, path).status_code == 200 for _ in range(10))
    revoke = admin.post(f"/ops/v1/api-keys/{key['id']}/revoke", json={"reason": "leaked"})
    assert revoke.status_code == 200
    revoked_at = time.monotonic()
    refused = lambda: fresh_get(keyed, secret, path).status_code == 401  # noqa: E731
    wait_until(refused, REVOCATION_DEADLINE_S, "the revoked key to be refused")
    # Twenty new connections, spread by the kernel over both processes: all refuse it.
    answers = [fresh_get(keyed, secret, path) for _ in range(20)]
    assert [a.status_code for a in answers] == [401] * 20
    assert time.monotonic() - revoked_at < REVOCATION_DEADLINE_S
    assert answers[0].json()["error"]["code"] == "unauthorized"


def test_a_rotated_key_and_its_successor_both_work_until_the_old_one_expires(
    keyed: Any, admin: httpx.Client
) -> None:
    old_secret, old = create_key(admin, SUBMIT_READ)
    queue_id = submit(_client(keyed, old_secret)).json()["id"]
    rotated = admin.post(f"/ops/v1/api-keys/{old['id']}/rotate", json={"grace_s": 3})
    assert rotated.status_code == 201, rotated.text
    new_secret, new = rotated.json()["secret"], rotated.json()["key"]
    assert (new["rotated_from"], new["scopes"], new["client"]) == (old["id"], SUBMIT_READ, "core")
    assert rotated.json()["replaced"]["expires_at"] is not None
    path = f"/v1/withdrawals/{queue_id}"
    assert fresh_get(keyed, old_secret, path).status_code == 200
    assert fresh_get(keyed, new_secret, path).status_code == 200
    expired = lambda: fresh_get(keyed, old_secret, path).status_code == 401  # noqa: E731
    wait_until(expired, 10, "the old key to expire after its grace period", every=0.2)
    assert fresh_get(keyed, new_secret, path).status_code == 200
    states = {k["id"]: k["state"] for k in admin.get("/ops/v1/api-keys").json()["keys"]}
    assert (states[old["id"]], states[new["id"]]) == ("expired", "active")


def _state(bootstrap: httpx.Client, queue_id: str) -> tuple[Any, Any]:
    view = bootstrap.get(f"/v1/withdrawals/{queue_id}").json()
    events = bootstrap.get(f"/v1/withdrawals/{queue_id}/events").json()["events"]
    return view["cancel_requested"], [e["id"] for e in events]


def test_a_key_without_the_cancel_scope_cannot_cancel_and_nothing_changes(
    keyed: Any, admin: httpx.Client, bootstrap: httpx.Client
) -> None:
    secret, _ = create_key(admin, SUBMIT_READ)
    api = _client(keyed, secret)
    queue_id = submit(api).json()["id"]
    wait_until(lambda: _at_alpha(bootstrap, queue_id), 30, "the order to be at alpha")
    before = _state(bootstrap, queue_id)
    refused = api.post(f"/v1/withdrawals/{queue_id}/cancel", json={"reason": "try"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    assert _state(bootstrap, queue_id) == before
    reader_secret, _ = create_key(admin, ["withdrawals:read"])
    order_id = f"ord-{uuid.uuid4().hex[:12]}"
    assert submit(_client(keyed, reader_secret), order_id=order_id).status_code == 403
    assert bootstrap.get(f"/v1/withdrawals/{order_id}").status_code == 404


def _at_alpha(bootstrap: httpx.Client, queue_id: str) -> bool:
    return bool(
        bootstrap.get(f"/v1/withdrawals/{queue_id}").json()["tasks"][0]["status"] == "EXECUTING"
    )


def test_a_merchant_bound_key_reaches_its_merchants_only(
    keyed: Any, admin: httpx.Client, bootstrap: httpx.Client
) -> None:
    secret, _ = create_key(admin, ALL, merchants=["m-keys-1"])
    api = _client(keyed, secret)
    theirs = submit(bootstrap, merchant="m-keys-2").json()["id"]
    wait_until(lambda: _at_alpha(bootstrap, theirs), 30, "the order to be at alpha")
    before = _state(bootstrap, theirs)
    assert api.get(f"/v1/withdrawals/{theirs}").status_code == 403
    assert api.get(f"/v1/withdrawals/{theirs}/events").status_code == 403
    assert api.post(f"/v1/withdrawals/{theirs}/cancel", json={}).status_code == 403
    assert _state(bootstrap, theirs) == before
    order_id = f"ord-{uuid.uuid4().hex[:12]}"
    assert submit(api, merchant="m-keys-2", order_id=order_id).status_code == 403
    assert bootstrap.get(f"/v1/withdrawals/{order_id}").status_code == 404
    mine = submit(api, merchant="m-keys-1")
    assert mine.status_code == 201
    assert api.get(f"/v1/withdrawals/{mine.json()['id']}").status_code == 200
    cancelled = api.post(f"/v1/withdrawals/{mine.json()['id']}/cancel", json={})
    assert cancelled.status_code == 202, cancelled.text
    actors = {e["actor"] for e in _events(bootstrap, mine.json()["id"])}
    assert any(a.startswith("api:core (key ") for a in actors), actors


def _events(api: httpx.Client, queue_id: str) -> list[dict[str, Any]]:
    return api.get(f"/v1/withdrawals/{queue_id}/events").json()["events"]  # type: ignore[no-any-return]


def test_the_bootstrap_token_does_everything_a_key_may(bootstrap: httpx.Client) -> None:
    created = submit(bootstrap, merchant="anyone")
    assert created.status_code == 201
    queue_id = created.json()["id"]
    assert bootstrap.get(f"/v1/withdrawals/{queue_id}").status_code == 200
    assert bootstrap.get(f"/v1/withdrawals/{queue_id}/events").status_code == 200
    assert bootstrap.post(f"/v1/withdrawals/{queue_id}/cancel", json={}).status_code == 202
    assert {e["actor"] for e in _events(bootstrap, queue_id)} >= {"cascade-core"}


def test_unknown_and_malformed_keys_are_401(keyed: Any) -> None:
    made_up = f"psk_{'0' * 12}_{'A' * 43}"
    for token in (made_up, "psk_x", "not-a-key", f"psk_{'0' * 12}_{'A' * 44}"):
        answer = submit(_client(keyed, token))
        assert answer.status_code == 401, token
        assert answer.json()["error"]["code"] == "unauthorized"


def test_keys_are_stored_as_digests_and_never_logged(keyed: Any, admin: httpx.Client) -> None:
    secret, key = create_key(admin, ALL)
    api = _client(keyed, secret)
    assert submit(api).status_code == 201
    admin.post(f"/ops/v1/api-keys/{key['id']}/revoke", json={"reason": "done"})
    assert submit(api).status_code == 401
    random_part = secret[len(f"psk_{key['prefix']}_") :]
    with psycopg.connect(keyed.database_url) as conn:
        stored = conn.execute("SELECT hash FROM api_keys WHERE id = %s", (key["id"],)).fetchone()
        tables = [
            str(row)
            for table in ("api_keys", "api_key_events", "order_task_events", "outbox")
            for row in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t")
        ]
    assert stored is not None and bytes(stored[0]) == hashlib.sha256(secret.encode()).digest()
    assert not [row for row in tables if random_part in row]
    for log in keyed.workdir.glob("*.log"):
        assert random_part not in log.read_text(errors="replace"), log
