"""People sign in as themselves (issue 21): the ops API takes a person's access token
from the OpenID issuer, and only theirs; roles decide what they may do; the audit
names them; break-glass is off unless configured, and audited and counted when
used. Against the stack's local issuer (sandbox/issuer.py) and a real API."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from devstack.embedded import PROJECT_ROOT, free_port
from sandbox import issuer
from sandbox.client import StackClient
from sandbox.stack import wait_until
from service.identity import Identity, IssuerKeys, roles_from_groups
from service.settings import Settings

TASK = f"/ops/v1/tasks/{uuid.uuid4()}"
# Every route that changes something, with a body it would take.
CHANGES = [
    (f"{TASK}/resolve", {"outcome": "positive", "reason": "r"}),
    (f"{TASK}/cancel", {"reason": "r"}),
    ("/ops/v1/withdrawals/nope/cancel", {"reason": "r"}),
    ("/ops/v1/dead-letters/1/replay", {}),
    ("/ops/v1/providers/alpha/circuit", {"state": "open", "reason": "r"}),
]
BREAK_GLASS_PASSWORD = "correct horse battery staple"


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def as_bearer(client: StackClient, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=client.stack.api_url, headers=headers, timeout=10)


def refused(answer: httpx.Response, status: int, token: str = "") -> str:
    """The answer is the JSON error object with `status`, and never echoes the token."""
    assert answer.status_code == status, answer.text
    assert token == "" or token not in answer.text
    return str(answer.json()["error"]["code"])


def test_tokens_it_cannot_trust_are_401(client: StackClient) -> None:
    stack = client.stack
    real_key, url = stack.issuer_key, stack.issuer_url
    stranger = {**issuer.new_private_jwk(), "kid": real_key["kid"]}  # forged: our kid
    untrusted = {
        "forged": issuer.mint(stranger, url, "ada"),
        "unknown key": issuer.mint(issuer.new_private_jwk(), url, "ada"),
        "expired": issuer.mint(real_key, url, "ada", lifetime_s=-120),
        "another issuer": issuer.mint(real_key, "http://127.0.0.1:1", "ada"),
        "wrong audience": issuer.mint(real_key, url, "ada", audience="another-api"),
        "an ID token": str(issuer.tokens(url, "ada")["id_token"]),
        "not a JWT": "dev-ops-token",
        "an unreadable header": f"{_b64({'alg': 'RS256', 'crit': True})}.e30.c2ln",
    }
    with issuer.running(free_port()) as elsewhere:  # a real issuer we do not trust
        untrusted["from another issuer"] = issuer.access_token(elsewhere, "ada")
    for why, token in untrusted.items():
        with as_bearer(client, token) as person:
            assert refused(person.get("/ops/v1/manual-checks"), 401, token) == "unauthorized", why
            answer = person.post("/ops/v1/providers/alpha/circuit", json=CHANGES[-1][1])
            assert refused(answer, 401, token) == "unauthorized", why
    with httpx.Client(base_url=stack.api_url, timeout=10) as nobody:
        assert refused(nobody.get("/ops/v1/attention"), 401) == "unauthorized"
    assert client.admin.get("/ops/v1/providers").status_code == 200  # the real one works


def test_a_viewer_may_read_and_change_nothing(client: StackClient) -> None:
    vic = client.person("vic")
    for path in ("/ops/v1/manual-checks", "/ops/v1/attention", "/ops/v1/dead-letters"):
        assert vic.get(path).status_code == 200, path
    for path, body in CHANGES:
        assert refused(vic.post(path, json=body), 403) == "forbidden", path
    bob = client.person("bob")  # an approver is no resolver
    assert refused(bob.post(*CHANGES[0][:1], json=CHANGES[0][1]), 403) == "forbidden"
    circuit, override = CHANGES[-1]
    assert refused(client.ops.post(circuit, json=override), 403) == "forbidden"  # ana


def test_a_resolver_resolves_and_the_audit_names_them_not_a_typed_name(
    client: StackClient,
) -> None:
    client.set_provider("sla", behaviour="never_answers")
    queue_id = client.submit(["sla"]).json()["id"]
    client.wait_task_status(queue_id, 0, "MANUAL_CHECK")
    task_id = client.withdrawal(queue_id)["tasks"][0]["id"]
    body = {"outcome": "negative", "operator": "mallory", "reason": "no payout at sla"}
    assert client.ops.post(f"/ops/v1/tasks/{task_id}/resolve", json=body).status_code == 200
    assert client.wait_final(queue_id)["status"] == "FAILED"
    ana = f"person:ana@example.com (sub ana at {client.stack.issuer_url})"
    (resolved,) = [e for e in client.events(queue_id) if e["event_type"] == "manual_resolved"]
    assert resolved["actor"] == ana
    assert "mallory" not in json.dumps(resolved)


def test_a_grant_in_the_table_gives_a_role_and_taking_it_away_takes_it(
    client: StackClient,
) -> None:
    vic, path = client.person("vic"), f"/ops/v1/tasks/{uuid.uuid4()}/cancel"
    assert vic.post(path, json={"reason": "r"}).status_code == 403
    grant = (client.stack.issuer_url, "vic", "resolver", "test")
    with psycopg.connect(client.stack.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO role_grants (issuer, subject, role, granted_by) VALUES (%s, %s, %s, %s)",
            grant,
        )
        assert refused(vic.post(path, json={"reason": "r"}), 404) == "not_found"  # allowed
        conn.execute("DELETE FROM role_grants WHERE subject = 'vic'")
    assert vic.post(path, json={"reason": "r"}).status_code == 403


def test_break_glass_is_off_unless_configured(client: StackClient) -> None:
    form = {"name": "", "password": ""}
    with httpx.Client(base_url=client.stack.api_url, timeout=10) as browser:
        answer = browser.post("/console/break-glass", data=form)
        assert answer.status_code == 401 and "console_session" not in answer.cookies
        assert "Break-glass" not in browser.get("/console/login").text
    assert break_glass_count(client.stack.api_url) == 0


@pytest.fixture
def break_glass_api(client: StackClient, tmp_path: Any) -> Iterator[str]:
    """A second API process of the stack, with break-glass configured."""
    port = free_port()
    digest = hashlib.sha256(BREAK_GLASS_PASSWORD.encode()).hexdigest()
    enabled = {"BREAK_GLASS_NAME": "oncall", "BREAK_GLASS_PASSWORD_SHA256": digest}
    env = {**client.stack.env(), **enabled}
    with (tmp_path / "api.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "server.py", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url), 30, "the break-glass API")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_break_glass_signs_in_audited_announced_and_counted(
    client: StackClient, break_glass_api: str
) -> None:
    with httpx.Client(base_url=break_glass_api, timeout=10) as browser:
        assert "Break-glass" in browser.get("/console/login").text
        wrong = {"name": "oncall", "password": "guess"}
        assert browser.post("/console/break-glass", data=wrong).status_code == 401
        assert break_glass_count(break_glass_api) == 0
        right = {"name": "oncall", "password": BREAK_GLASS_PASSWORD}
        answer = browser.post("/console/break-glass", data=right)
        assert answer.status_code == 200, answer.text
        session = answer.cookies["console_session"]
        browser.cookies.set("console_session", session, path="/console")
        assert "oncall (break-glass)" in browser.get("/console").text
    assert break_glass_count(break_glass_api) == 1
    with httpx.Client(base_url=client.stack.api_url, timeout=10) as off:  # break-glass off
        off.cookies.set("console_session", session, path="/console")
        assert off.get("/console", follow_redirects=False).status_code == 303  # no session
    with psycopg.connect(client.stack.database_url) as conn:
        audited = conn.execute(
            "SELECT actor, detail->>'via' FROM people_events WHERE kind = 'break_glass_sign_in'"
        ).fetchall()
        announced = conn.execute(
            "SELECT payload->>'subject' FROM outbox WHERE subject = %s",
            ("order.people.break_glass_sign_in",),
        ).fetchall()
    assert audited == [("person:oncall (sub oncall at break-glass)", "break_glass")]
    assert announced == [("oncall",)]
    assert BREAK_GLASS_PASSWORD not in json.dumps([audited, announced])


def break_glass_count(api_url: str) -> float:
    text = httpx.get(f"{api_url}/metrics", timeout=5).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("break_glass_sign_ins_total ")]
    return float(line.split()[1])


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_groups_map_to_roles_by_the_configured_pairs() -> None:
    pairs = (("payments-resolvers", "resolver"), ("payments-admins", "admin"))
    assert roles_from_groups(["payments-resolvers", "other"], pairs) == {"resolver"}
    assert roles_from_groups("payments-admins payments-resolvers", pairs) == {"admin", "resolver"}
    assert roles_from_groups(None, pairs) == frozenset()
    assert roles_from_groups([1, {"x": 2}], pairs) == frozenset()
    with pytest.raises(ValueError, match="OIDC_GROUP_ROLES"):
        Settings(database_url="x", oidc_group_roles="payments=boss")


async def test_keys_are_fetched_again_when_the_issuer_rotates_them() -> None:
    """A token signed with a key the cached set lacks makes the service fetch the set
    again (here at once; by default at most once a minute)."""
    port, first, second = free_port(), issuer.new_private_jwk(), issuer.new_private_jwk()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(database_url="x", oidc_issuer=url, oidc_client_id=issuer.CLIENT_ID)
    fetched: list[str] = []

    async def count(request: httpx.Request) -> None:
        fetched.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [count]}) as http:
        identity = Identity(settings, http)
        identity.keys = IssuerKeys(url, http, refetch_at_most_every_s=0)
        with issuer.running(port, first):
            claims = await identity.claims(issuer.mint(first, url, "ana"), issuer.CLIENT_ID)
            assert claims["groups"] == ["payments-resolvers"]
        with issuer.running(port, second):  # the same issuer, its key rotated
            claims = await identity.claims(issuer.mint(second, url, "bob"), issuer.CLIENT_ID)
            assert claims["sub"] == "bob"
    assert fetched.count("/jwks") == 2 and fetched.count("/.well-known/openid-configuration") == 1


def test_the_environment_says_nothing_of_ops_tokens() -> None:
    """OPS_TOKENS is gone: no shared secret stands in for a person."""
    assert "ops_tokens" not in Settings.model_fields
