"""API keys for cascade-core's API, managed by an admin (signed in at the stack's
OpenID issuer, sandbox/issuer.py) through the ops API, on two API processes."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from devstack.embedded import PROJECT_ROOT
from sandbox import issuer
from sandbox.servers import NatsServer
from sandbox.stack import API_TOKEN, ProviderSpec, Stack, wait_until
from tests.conftest import FAST_TIMING, own_stack
from tests.openapi_contract import hook
from tests.test_console import sign_in

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


def _cli(stack: Stack, person: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`python -m service.ops --json keys ...` as `person`, signed in at the stack's issuer."""
    token = issuer.access_token(stack.issuer_url, person)
    return subprocess.run(
        [sys.executable, "-m", "service.ops", "--json", "keys", *arguments],
        cwd=PROJECT_ROOT,
        env={**stack.env(), "OPS_ACCESS_TOKEN": token},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_command_line_manages_keys_for_a_signed_in_admin(keyed: Any) -> None:
    create = ("create", "--client=cli", "--scope=withdrawals:read", "--merchant=m-1")
    refused = _cli(keyed, "ana", *create)  # a resolver, not an admin
    assert refused.returncode != 0 and "lacks the admin role" in refused.stderr
    made = json.loads(_cli(keyed, "ada", *create).stdout)[0]
    assert made["secret"].startswith(f"psk_{made['prefix']}_") and made["merchants"] == ["m-1"]
    rotated = json.loads(_cli(keyed, "ada", "rotate", made["id"], "--grace-s=60").stdout)[0]
    assert rotated["rotated_from"] == made["id"]
    revoked = json.loads(_cli(keyed, "ada", "revoke", made["id"], "--reason=test").stdout)[0]
    assert revoked["state"] == "revoked"
    listed = json.loads(_cli(keyed, "ada", "list").stdout)
    assert {k["id"] for k in listed} >= {made["id"], rotated["id"]}
    assert not any("secret" in k or "hash" in k for k in listed)
    with psycopg.connect(keyed.database_url) as conn:
        rows = conn.execute(
            "SELECT action, actor FROM api_key_events WHERE key_id = %s ORDER BY id", (made["id"],)
        ).fetchall()
    assert [action for action, _ in rows] == ["created", "rotated", "revoked"]
    assert all("ada@example.com" in actor for _, actor in rows), rows


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None, html
    return found.group(1)


def _shown_key(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"  # the browser keeps no copy
    found = re.search(r'<code id="secret">(psk_[^<]+)</code>', answer.text)
    assert found is not None, answer.text
    return found.group(1)


def test_an_admin_makes_rotates_and_revokes_keys_in_the_console(keyed: Any) -> None:
    with httpx.Client(base_url=keyed.api_url, follow_redirects=False) as browser:
        sign_in(browser, "vic")  # a viewer
        assert browser.get("/console/api-keys").status_code == 403
    probe = "/v1/withdrawals/no-such-order"  # 404 for a valid key, 401 for another
    with httpx.Client(base_url=keyed.api_url, follow_redirects=False) as browser:
        sign_in(browser, "ada")
        csrf = _csrf(browser.get("/console/api-keys").text)
        form = {"client": "console", "scope:withdrawals:read": "1", "merchants": "m-1, m-2"}
        assert browser.post("/console/api-keys", data=form).status_code == 403  # no CSRF
        first = _shown_key(browser.post("/console/api-keys", data={**form, "csrf": csrf}))
        assert fresh_get(keyed, first, probe).status_code == 404
        listing = browser.get("/console/api-keys").text
        assert first[4:16] in listing and first not in listing  # its prefix, never its value
        row = _key_row(keyed, first)
        assert row is not None and row[1] == ["m-1", "m-2"]
        rotate = {"csrf": csrf, "grace_hours": "0"}  # the old key ends now
        second = _shown_key(browser.post(f"/console/api-keys/{row[0]}/rotate", data=rotate))
        assert fresh_get(keyed, first, probe).status_code == 401
        assert fresh_get(keyed, second, probe).status_code == 404
        found = _key_row(keyed, second)
        assert found is not None
        revoke = f"/console/api-keys/{found[0]}/revoke"
        assert browser.post(revoke, data={"csrf": csrf, "reason": ""}).status_code == 422
        assert browser.post(revoke, data={"csrf": csrf, "reason": "done"}).status_code == 303
    assert fresh_get(keyed, second, probe).status_code == 401
    with psycopg.connect(keyed.database_url) as conn:
        actors = conn.execute(
            "SELECT DISTINCT actor FROM api_key_events WHERE key_id IN (%s, %s)", (row[0], found[0])
        ).fetchall()
    assert len(actors) == 1 and "ada@example.com" in actors[0][0]


def _key_row(stack: Stack, key: str) -> tuple[Any, ...] | None:
    """The key's id and merchants, found by its prefix (`psk_<prefix>_...`)."""
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute(
            "SELECT id::text, merchants FROM api_keys WHERE prefix = %s", (key[4:16],)
        ).fetchone()
