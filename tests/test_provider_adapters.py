"""Providers as plug-ins: the adapter registry, and Acme, a second provider protocol.

Its own stack (real PostgreSQL, the sandbox, the API and a worker over HTTP)
with two Acme providers beside a reference one: payment-service builds each
provider's adapter from its `adapter` setting, the sandbox speaks each one's
`protocol`. The reference providers of the shared stack are untouched.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from activities import acme
from activities.http import OutboundHttp
from activities.outcomes import HttpAnswer, Verdict
from activities.provider_adapters import (
    UnknownAdapter,
    UnreadableWebhook,
    WebhookTranslator,
    build_adapters,
    known_adapters,
)
from activities.provider_config import ProviderConfig, load_providers
from activities.providers import OrderStatus, WebhookNotice
from activities.standard_webhooks import WebhookRejected, new_secret, signed_headers
from engine.contracts import ShellJob
from engine.db import open_pool
from engine.jobs import build_app
from engine.migrations import migrate
from engine.retry import CappedBackoff
from engine.scheduler import ProcrastinateScheduler
from sandbox.client import StackClient
from sandbox.config import ConfigError, load_config, parse_config
from sandbox.stack import ProviderSpec, Stack, wait_until
from tests.conftest import FAST_TIMING, fresh_database
from tests.openapi_contract import hook
from workflows.withdrawal_events import ProviderSucceeded

ACME = {"acme": FAST_TIMING, "acme_sla": {**FAST_TIMING, "webhook_sla_s": 1.0}}
# The sandbox signs with the secret the stack drew; payment-service also lists a
# newer one first (a rotation in progress): either must verify.
# Fixed secrets: nothing here is drawn at random (the stack's other ids are uuids).
ROTATED = "whsec_cm90YXRlZC1hY21lLXNlY3JldC0wMDAwMDA="
SECRETS = {
    "acme": "whsec_YWNtZS1zYW5kYm94LXNlY3JldC0wMDAwMDE=",
    "acme_sla": "whsec_YWNtZS1zbGEtc2FuZGJveC1zZWNyZXQtMDI=",
}


class AdapterStack(Stack):
    """A stack whose Acme providers say so in both config files (ProviderSpec has
    no such field: the files are written, then the two lines added)."""

    def write_configs(self) -> None:
        super().write_configs()
        edits = {"sandbox.toml": "protocol", "providers.toml": "adapter"}
        for file, key in edits.items():
            path = self.workdir / file
            text = path.read_text()
            for name in ACME:
                table = f"[providers.{name}]\n"
                assert table in text, text
                text = text.replace(table, f'{table}{key} = "acme"\n', 1)
            secret = self.secrets["acme"]
            rotating = f'webhook_secrets = ["{ROTATED}", "{secret}"]'
            text = text.replace(f'webhook_secrets = ["{secret}"]', rotating)
            path.write_text(text)


@pytest.fixture(scope="module")
def adapter_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    specs = [ProviderSpec(name, timing=timing) for name, timing in ACME.items()]
    specs.append(ProviderSpec("alpha", timing=FAST_TIMING))
    with fresh_database("_adapters") as url:
        migrate(url)
        stack = AdapterStack(
            url, tmp_path_factory.mktemp("adapters"), specs, workers=1, secrets=dict(SECRETS)
        )
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


@pytest.fixture
def client(adapter_stack: Stack) -> Iterator[StackClient]:
    c = StackClient(adapter_stack, on_response=hook)  # answers checked against /openapi.json
    for name in (*ACME, "alpha"):
        c.set_provider(name, behaviour="instant", webhook_delay_ms=100)
    yield c


def _rows(url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query, args).fetchall()


def _inbox(url: str, reference: str) -> list[dict[str, Any]]:
    return _rows(
        url,
        "SELECT provider, webhook_id, outcome, processed_at FROM webhook_inbox"
        " WHERE reference = %s ORDER BY id",
        reference,
    )


def _task(client: StackClient, queue_id: str) -> dict[str, Any]:
    task: dict[str, Any] = client.withdrawal(queue_id)["tasks"][0]
    return task


def _waiting_at(client: StackClient, provider: str) -> tuple[str, dict[str, Any]]:
    """A withdrawal whose order is open at `provider`, which will never answer on its own."""
    client.set_provider(provider, behaviour="never_answers")
    queue_id = client.submit([provider]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    return queue_id, _task(client, queue_id)


def _acme_body(event_id: str, reference: str, state: str, order_id: str | None) -> bytes:
    order = {"id": order_id, "merchant_reference": reference, "state": state}
    return json.dumps({"event_id": event_id, "order": order}).encode()


def _post_acme(
    client: StackClient,
    provider: str,
    body: bytes,
    secret: str,
    at: int | None = None,
    sent: bytes | None = None,
) -> httpx.Response:
    """POST `sent` (default: `body`) with Acme's signature of `body`."""
    headers = acme.signed_headers(secret, int(time.time()) if at is None else at, body)
    headers["content-type"] = "application/json"
    return client.api.post(f"/webhooks/{provider}", content=sent or body, headers=headers)


def _ledger(client: StackClient, key: str) -> list[str]:
    return client.ledger_ops().get(key, [])


# -- end to end --------------------------------------------------------------------


def test_a_withdrawal_is_paid_through_the_acme_adapter(client: StackClient) -> None:
    """Create (minor units, X-Acme-Key), then Acme's signed webhook, then the commit."""
    client.set_provider("acme", behaviour="delayed_webhook", webhook_delay_ms=200)
    queue_id = client.submit(["acme"], amount="12.34").json()["id"]
    view = client.wait_final(queue_id)
    assert view["status"] == "COMPLETED", view
    task = view["tasks"][0]
    assert (task["status"], task["funds"]) == ("SUCCEEDED", "COMMITTED"), task
    assert _ledger(client, task["id"]) == ["freeze", "commit"]
    order = client.provider_orders()[task["id"]]
    assert (order["provider"], order["amount"], order["creates"]) == ("acme", "12.34", 1)
    assert task["provider_ref"] == order["id"]
    # The webhook the sandbox signed (with the older of the two secrets) did it.
    inbox = _inbox(client.stack.database_url, task["id"])
    assert [(r["provider"], r["outcome"]) for r in inbox] == [("acme", "applied")], inbox
    assert inbox[0]["webhook_id"].startswith("evt_")
    # Already paid at create (PAID): accepted and paid, no webhook needed.
    client.set_provider("acme", behaviour="instant")
    paid = client.wait_final(client.submit(["acme"]).json()["id"])
    assert (paid["status"], paid["tasks"][0]["funds"]) == ("COMPLETED", "COMMITTED"), paid


def test_a_forged_acme_webhook_is_a_401_and_applies_nothing(client: StackClient) -> None:
    queue_id, task = _waiting_at(client, "acme")
    url, secret = client.stack.database_url, client.stack.secrets["acme"]
    paid = _acme_body("evt_" + uuid.uuid4().hex, task["id"], "PAID", task["provider_ref"])
    now = int(time.time())
    forged = {
        "another secret": _post_acme(client, "acme", paid, new_secret()),
        "another provider's secret": _post_acme(client, "acme", paid, SECRETS["acme_sla"]),
        "too old": _post_acme(client, "acme", paid, secret, at=now - 301),
        "other body": _post_acme(client, "acme", paid, secret, sent=paid.replace(b"}}", b"} }")),
    }
    # Signed right for the reference protocol: not Acme's signature, so not Acme's webhook.
    reference_headers = signed_headers(secret, "msg_" + uuid.uuid4().hex, now, paid)
    forged["reference signature"] = client.api.post(
        "/webhooks/acme",
        content=paid,
        headers={**reference_headers, "content-type": "application/json"},
    )
    reasons = {}
    for name, response in forged.items():
        assert response.status_code == 401, (name, response.text)
        error = response.json()["error"]
        assert error["code"] == "webhook_rejected", (name, error)
        reasons[name] = error["message"]
    assert reasons == {
        "another secret": "bad_signature",
        "another provider's secret": "bad_signature",
        "too old": "timestamp_out_of_tolerance",
        "other body": "bad_signature",
        "reference signature": "missing_headers",
    }
    assert _inbox(url, task["id"]) == []
    assert _task(client, queue_id)["status"] == "EXECUTING"
    assert _ledger(client, task["id"]) == ["freeze"]
    # The same webhook, signed with either of the provider's secrets, is Acme's: it pays.
    assert _post_acme(client, "acme", paid, ROTATED).status_code == 202
    view = client.wait_final(queue_id)
    assert (view["status"], view["tasks"][0]["funds"]) == ("COMPLETED", "COMMITTED"), view
    assert _ledger(client, task["id"]) == ["freeze", "commit"]


def test_an_unknown_acme_state_is_never_a_success(client: StackClient) -> None:
    """A state Acme's table does not know: its webhook is refused, and the status
    calls after the webhook SLA read it as unknown, so the task goes to a person."""
    queue_id, task = _waiting_at(client, "acme_sla")
    url, secret = client.stack.database_url, client.stack.secrets["acme_sla"]
    client.sandbox.patch(
        f"/providers/_admin/acme_sla/orders/{task['id']}", json={"wire_state": "SETTLED"}
    ).raise_for_status()
    order = client.sandbox.get(
        f"/providers/acme_sla/v2/payouts/{task['id']}", headers={"X-Acme-Key": "sk_test_acme_sla"}
    ).json()["order"]
    assert order["state"] == "SETTLED"
    body = _acme_body("evt_" + uuid.uuid4().hex, task["id"], "SETTLED", task["provider_ref"])
    response = _post_acme(client, "acme_sla", body, secret)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {"code": "webhook_rejected", "message": "bad_payload"}
    client.wait_task_status(queue_id, 0, "MANUAL_CHECK", timeout=20)
    view = client.withdrawal(queue_id)
    assert view["status"] == "ACTIVE", view
    assert view["tasks"][0]["funds"] == "FROZEN", view
    assert _inbox(url, task["id"]) == []
    assert _ledger(client, task["id"]) == ["freeze"]
    # The control: the same order in a state Acme's table knows does pay.
    client.sandbox.patch(
        f"/providers/_admin/acme_sla/orders/{task['id']}", json={"wire_state": "PAID"}
    ).raise_for_status()
    paid = _acme_body("evt_" + uuid.uuid4().hex, task["id"], "PAID", task["provider_ref"])
    assert _post_acme(client, "acme_sla", paid, secret).status_code == 202
    assert client.wait_final(queue_id)["status"] == "COMPLETED"


async def _never_run_here(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("deferred here, run by the stack's worker")


async def _store_and_defer(url: str, provider: str, webhook_id: str, ref: str, body: bytes) -> int:
    """What the API does with a webhook it could not apply at once: store it, and
    defer a `webhook` job for it in the same transaction."""
    # Only to defer it: the stack's worker runs the `webhook` job (the service's inbox).
    inbox_job = ShellJob("webhooks", _never_run_here)
    app = build_app(url, CappedBackoff(1, 1, 1), pool_size=1, shell_jobs={"webhook": inbox_job})
    await app.open_async()
    pool = await open_pool(url, max_size=1)
    try:
        async with pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    "INSERT INTO webhook_inbox (provider, webhook_id, reference, body)"
                    " VALUES (%s, %s, %s, %s::jsonb) RETURNING id",
                    (provider, webhook_id, ref, body.decode()),
                )
            ).fetchone()
            assert row is not None
            await ProcrastinateScheduler(app).defer_job(conn, "webhook", inbox_id=int(row["id"]))
            return int(row["id"])
    finally:
        await pool.close()
        await app.close_async()


def test_a_stored_acme_webhook_is_applied_by_the_job_through_the_adapter(
    client: StackClient,
) -> None:
    """The `webhook` job reads a stored row with the provider's adapter: Acme's shape
    is applied, and a body in the reference shape, which Acme never sends, is not."""
    queue_id, task = _waiting_at(client, "acme")
    url = client.stack.database_url

    def outcome(webhook_id: str) -> str | None:
        rows = _rows(
            url,
            "SELECT outcome FROM webhook_inbox WHERE webhook_id = %s AND processed_at IS NOT NULL",
            webhook_id,
        )
        return rows[0]["outcome"] if rows else None

    reference_shape = json.dumps(
        {
            "type": "order.updated",
            "data": {"id": task["provider_ref"], "reference": task["id"], "status": "succeeded"},
        }
    ).encode()
    foreign = "evt_" + uuid.uuid4().hex
    asyncio.run(_store_and_defer(url, "acme", foreign, task["id"], reference_shape))
    assert wait_until(lambda: outcome(foreign), 20, "the job to read it") == "unknown_task"
    assert _task(client, queue_id)["status"] == "EXECUTING"
    assert _ledger(client, task["id"]) == ["freeze"]

    event_id = "evt_" + uuid.uuid4().hex
    paid = _acme_body(event_id, task["id"], "PAID", task["provider_ref"])
    asyncio.run(_store_and_defer(url, "acme", event_id, task["id"], paid))
    assert wait_until(lambda: outcome(event_id), 20, "the job to apply it") == "applied"
    view = client.wait_final(queue_id)
    assert (view["status"], view["tasks"][0]["funds"]) == ("COMPLETED", "COMMITTED"), view
    assert _ledger(client, task["id"]) == ["freeze", "commit"]
    assert not _rows(url, "SELECT 1 FROM dead_letters")


def test_the_reference_provider_beside_acme_keeps_its_protocol(client: StackClient) -> None:
    """alpha (no `adapter` line: "http") is paid by its Standard Webhooks as before,
    and its routes are not Acme's."""
    client.set_provider("alpha", behaviour="delayed_webhook", webhook_delay_ms=100)
    view = client.wait_final(client.submit(["alpha"]).json()["id"])
    assert (view["status"], view["tasks"][0]["funds"]) == ("COMPLETED", "COMMITTED"), view
    inbox = _inbox(client.stack.database_url, view["tasks"][0]["id"])
    assert [(r["provider"], r["outcome"]) for r in inbox] == [("alpha", "applied")]
    assert inbox[0]["webhook_id"].startswith("msg_")
    acme_route = client.sandbox.post(
        "/providers/alpha/v2/payouts", headers={"X-Acme-Key": "sk_test_alpha"}, json={}
    )
    assert acme_route.status_code == 404


def test_the_sandbox_speaks_acme_to_acme_providers_only(client: StackClient) -> None:
    key, ref = {"X-Acme-Key": "sk_test_acme"}, str(uuid.uuid4())
    payouts = "/providers/acme/v2/payouts"
    body = {"merchant_reference": ref, "amount_minor": 1050, "currency": "EUR"}
    first = client.sandbox.post(payouts, json=body, headers=key)
    again = client.sandbox.post(payouts, json=body, headers=key)  # idempotent on the reference
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert first.json() == again.json()
    assert first.json()["order"]["merchant_reference"] == ref
    assert first.json()["order"]["state"] == "PAID"  # behaviour instant
    order = client.provider_orders()[ref]
    assert (order["amount"], order["creates"]) == ("10.50", 2)
    assert client.sandbox.get(f"{payouts}/{ref}", headers=key).json() == first.json()

    def error(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, response.json()["error_code"]

    assert error(client.sandbox.post(payouts, json=body, headers={"X-Acme-Key": "no"})) == (
        401,
        "UNAUTHORIZED",
    )
    wrong = {**body, "amount_minor": "10.50"}
    assert error(client.sandbox.post(payouts, json=wrong, headers=key)) == (400, "INVALID_REQUEST")
    assert error(client.sandbox.get(f"{payouts}/{uuid.uuid4()}", headers=key)) == (
        404,
        "NOT_FOUND",
    )
    client.set_provider("acme", behaviour="decline")
    declined = {**body, "merchant_reference": str(uuid.uuid4())}
    assert error(client.sandbox.post(payouts, json=declined, headers=key)) == (422, "DECLINED")
    reference_route = client.sandbox.post(
        "/providers/acme/v1/orders",
        json={"reference": ref, "amount": "10.50", "currency": "EUR"},
        headers={"Authorization": "Bearer sk_test_acme", "Idempotency-Key": ref},
    )
    assert reference_route.status_code == 404


def test_the_default_configs_keep_the_reference_protocol() -> None:
    """The demo's files name no adapter or protocol: every provider stays "http"."""
    root = Path(__file__).resolve().parent.parent / "config"
    assert {c.adapter for c in load_providers(root / "providers.toml").values()} == {"http"}
    sandbox = load_config(root / "sandbox.toml")
    assert {c.protocol for c in sandbox.providers.values()} == {"http"}
    raw = {
        "webhook_url": "http://127.0.0.1:1",
        "ledger_token": "t",
        "providers": {"x": {"api_key": "k", "webhook_secret": ROTATED, "protocol": "soap"}},
    }
    with pytest.raises(
        ConfigError, match=r"providers\.x\.protocol must be one of \['acme', 'http'\]"
    ):
        parse_config(raw)


# -- the registry and the providers file ---------------------------------------------


def _providers_file(path: Path, adapter: str) -> Path:
    path.write_text(
        "[providers.alpha]\n"
        'base_url = "http://127.0.0.1:9/providers/alpha"\n'
        'api_key = "sk_alpha"\n'
        'webhook_secrets = ["whsec_c2FuZGJveC1hbHBoYS1zZWNyZXQtMDE="]\n'
        "[providers.zeta]\n"
        f'adapter = "{adapter}"\n'
        'base_url = "http://127.0.0.1:9/providers/zeta"\n'
        'api_key = "sk_zeta"\n'
        'webhook_secrets = ["whsec_c2FuZGJveC1hbHBoYS1zZWNyZXQtMDE="]\n'
    )
    return path


def test_a_providers_file_naming_an_unknown_adapter_does_not_load(tmp_path: Path) -> None:
    providers = load_providers(_providers_file(tmp_path / "providers.toml", "stripe-ish"))
    assert providers["alpha"].adapter == "http"  # the default
    with pytest.raises(UnknownAdapter) as refused:
        build_adapters(providers, OutboundHttp(1.0))
    message = str(refused.value)
    assert "'zeta'" in message and "'stripe-ish'" in message, message
    assert "known adapters: acme, http" in message, message
    assert known_adapters() == ["acme", "http"]
    ok = load_providers(_providers_file(tmp_path / "ok.toml", "acme"))
    adapters = build_adapters(ok, OutboundHttp(1.0))
    assert (type(adapters["alpha"]).__name__, type(adapters["zeta"]).__name__) == (
        "HttpProviderAdapter",
        "AcmeProviderAdapter",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_api_refuses_to_start_on_an_unknown_adapter(tmp_path: Path) -> None:
    """The process, not just the function: it exits, and its output names the provider,
    the adapter and the known ones."""
    with fresh_database("_bad_adapter") as url:
        migrate(url)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "PROVIDERS_FILE": str(_providers_file(tmp_path / "providers.toml", "nope")),
            "API_TOKENS": "t",
            "PYTHONUNBUFFERED": "1",
        }
        root = Path(__file__).resolve().parent.parent
        server = subprocess.run(
            [sys.executable, "server.py", "--port", str(_free_port())],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = server.stdout + server.stderr
    assert server.returncode != 0, output
    assert "provider 'zeta': unknown adapter 'nope' (known adapters: acme, http)" in output, output


# -- Acme's edge, without HTTP -------------------------------------------------------


def _acme_config(name: str, *secrets: str) -> ProviderConfig:
    return ProviderConfig.model_validate(
        {
            "name": name,
            "adapter": "acme",
            "base_url": "http://127.0.0.1:9/acme",
            "api_key": "k",
            "webhook_secrets": secrets or (SECRETS["acme"],),
        }
    )


def _acme_adapter(*secrets: str) -> acme.AcmeProviderAdapter:
    return acme.AcmeProviderAdapter(_acme_config("acme", *secrets), OutboundHttp(1.0))


def test_acme_states_map_explicitly_and_anything_else_is_unknown() -> None:
    assert dict(acme.STATES) == {
        "PROCESSING": OrderStatus.PENDING,
        "PAID": OrderStatus.SUCCEEDED,
        "REJECTED": OrderStatus.FAILED,
    }
    for state in ("SETTLED", "paid", "PAID ", "", None, 1, ["PAID"], {"PAID": 1}):
        assert acme.order_status(state) == OrderStatus.UNKNOWN, state


def test_acme_create_answers_are_classified_at_the_edge() -> None:
    adapter, ref = _acme_adapter(), str(uuid.uuid4())

    def answer(status: int, state: object = None, **body: Any) -> tuple[Verdict, str, bool]:
        if state is not None:
            body["order"] = {"id": "acm_1", "merchant_reference": ref, "state": state}
        result = adapter._classify_create(ref, HttpAnswer(status, body, retry_after_s=2.0))
        return result.verdict, result.reason, result.paid

    assert answer(201, "PROCESSING") == (Verdict.ACCEPTED, "", False)
    assert answer(201, "PAID") == (Verdict.ACCEPTED, "", True)
    assert answer(200, "REJECTED") == (Verdict.DECLINED, "rejected", False)
    assert answer(201, "SETTLED") == (Verdict.AMBIGUOUS, "unknown_state", False)
    assert answer(201) == (Verdict.AMBIGUOUS, "accepted_without_order", False)
    other = {"order": {"id": "acm_2", "merchant_reference": "someone-else", "state": "PAID"}}
    assert answer(201, **other)[:2] == (Verdict.AMBIGUOUS, "answer_for_another_order")
    assert answer(422, error_code="DECLINED") == (Verdict.DECLINED, "DECLINED", False)
    assert answer(429) == (Verdict.THROTTLED, "throttled", False)
    assert answer(401, error_code="UNAUTHORIZED") == (Verdict.AMBIGUOUS, "UNAUTHORIZED", False)


def test_acme_signatures_verify_with_any_current_secret_in_constant_time() -> None:
    old, new = SECRETS["acme"], ROTATED
    adapter, now = _acme_adapter(new, old), int(time.time())
    ref = str(uuid.uuid4())
    body = _acme_body("evt_1", ref, "REJECTED", "acm_1")
    expected = WebhookNotice("evt_1", ref, OrderStatus.FAILED, "acm_1")
    for secret in (old, new):
        assert adapter.verify_webhook(acme.signed_headers(secret, now, body), body, now, 300) == (
            expected
        )

    def reason(headers: dict[str, str], sent: bytes = body) -> str:
        with pytest.raises(WebhookRejected) as rejected:
            adapter.verify_webhook(headers, sent, now, 300)
        return rejected.value.reason

    good = acme.signed_headers(old, now, body)
    assert reason(acme.signed_headers(SECRETS["acme_sla"], now, body)) == "bad_signature"
    assert reason(good, body + b" ") == "bad_signature"
    assert reason(acme.signed_headers(old, now + 301, body)) == "timestamp_out_of_tolerance"
    assert reason({**good, "x-acme-signature": "zz" * 32}) == "malformed_signature"
    assert reason({**good, "x-acme-signature": good["x-acme-signature"][:-2]}) == (
        "malformed_signature"
    )
    assert reason({**good, "x-acme-timestamp": "-1"}) == "malformed_timestamp"
    assert reason({"x-acme-signature": good["x-acme-signature"]}) == "missing_headers"
    unknown = _acme_body("evt_2", ref, "SETTLED", "acm_1")
    assert reason(acme.signed_headers(old, now, unknown), unknown) == "bad_payload"


def test_the_translator_reads_stored_rows_only_through_the_adapter() -> None:
    translate = WebhookTranslator(build_adapters({"zeta": _acme_config("zeta")}, OutboundHttp(1.0)))
    ref = str(uuid.uuid4())
    acme_body = json.loads(_acme_body("evt_1", ref, "PAID", "acm_1"))
    acme_row = {"provider": "zeta", "webhook_id": "evt_1", "body": acme_body}
    assert translate(acme_row) == (ref, ProviderSucceeded("acm_1", speaker="zeta"))
    reference_row = {
        "provider": "zeta",
        "webhook_id": "msg_1",
        "body": {"type": "order.updated", "data": {"reference": ref, "status": "succeeded"}},
    }
    with pytest.raises(UnreadableWebhook):
        translate(reference_row)
    with pytest.raises(UnreadableWebhook):
        translate({**acme_row, "provider": "gone"})  # no adapter for it any more
