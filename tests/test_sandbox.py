"""The sandbox over real HTTP: ledger on PostgreSQL, simulated providers, webhooks.

One sandbox (uvicorn in a thread) serves the whole module, with one provider per
behaviour named after it. Its webhooks go to a tiny receiver server. Tests keep
their own keys, references and ledger providers, so they never depend on order.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from activities.standard_webhooks import WebhookRejected, new_secret, verify
from sandbox.app import build_app
from sandbox.config import BEHAVIOURS, SandboxConfig, load_config
from tests.conftest import fresh_database

TOKEN = "ledger-test-token"
DELAY_MS = 50
HANG_MS = 1000
SECRETS = {name: new_secret() for name in BEHAVIOURS}
T = TypeVar("T")


# -- servers ----------------------------------------------------------------


class ServerThread:
    """A uvicorn server on a pre-bound free port, running in its own thread and loop."""

    def __init__(self, app: Starlette) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto
        # says TCP, and without it every response waits ~40 ms for a delayed ACK.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=3
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@dataclass(frozen=True)
class Received:
    provider: str
    headers: dict[str, str]
    body: bytes

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)["data"]
        return data


class Receiver:
    """Stands in for payment-service's webhook endpoint; can fail on purpose."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.failures: dict[str, int] = {}  # reference -> answers still to fail
        self.url = ""
        self.app = Starlette(routes=[Route("/webhooks/{name}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        reference = json.loads(body)["data"]["reference"]
        with self.lock:
            self.received.append(Received(request.path_params["name"], dict(request.headers), body))
            failing = self.failures.get(reference, 0)
            self.failures[reference] = max(failing - 1, 0)
        return Response(status_code=500 if failing else 204)

    def for_reference(self, reference: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.data["reference"] == reference]


def write_config(path: Path, webhook_url: str) -> SandboxConfig:
    lines = [f'webhook_url = "{webhook_url}"', f'ledger_token = "{TOKEN}"']
    for name in sorted(BEHAVIOURS):
        lines += [
            f"[providers.{name}]",
            f'api_key = "sk_{name}"',
            f'webhook_secret = "{SECRETS[name]}"',
            f'behaviour = "{name}"',
            f"webhook_delay_ms = {DELAY_MS}",
            f"hang_ms = {HANG_MS}",
            'balances = { EUR = "100.00", JPY = "5000" }',
        ]
        if name == "market":  # a market that always takes the order, quickly
            lines += [
                "[providers.market.market]",
                "approval = 1.0",
                "accept_latency_ms = [0, 1]",
                "webhook_median_ms = 20",
                "webhook_max_ms = 50",
            ]
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """The sandbox's own database: its ledger resets must not wipe the ledger of the
    session stack, which shares the tests' database (a later scenario's money check
    would find every hold gone)."""
    with fresh_database("_sandbox") as url:
        yield url


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    with ServerThread(rec.app) as server:
        rec.url = server.url
        yield rec


@pytest.fixture(scope="module")
def config(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> SandboxConfig:
    return write_config(tmp_path_factory.mktemp("sandbox") / "sandbox.toml", receiver.url)


@pytest.fixture(scope="module")
def sandbox_url(config: SandboxConfig, database_url: str) -> Iterator[str]:
    with ServerThread(build_app(config, database_url)) as server:
        yield server.url


@pytest.fixture
async def http(sandbox_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox_url, timeout=10) as client:
        yield client


# -- helpers ----------------------------------------------------------------

ADMIN = {"Authorization": f"Bearer {TOKEN}"}


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 5.0) -> T:
    """Poll `probe` until it returns something other than None, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def ledger_provider(http: httpx.AsyncClient, available: str = "100.00") -> str:
    """A ledger provider of this test's own, funded in EUR."""
    name = unique("lp")
    r = await http.put(
        f"/ledger/_admin/balances/{name}/EUR", json={"available": available}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    return name


async def balance(http: httpx.AsyncClient, provider: str, currency: str = "EUR") -> dict[str, str]:
    r = await http.get("/ledger/v1/balances", headers=ADMIN)
    assert r.status_code == 200
    rows = [
        b for b in r.json()["balances"] if (b["provider"], b["currency"]) == (provider, currency)
    ]
    assert len(rows) == 1
    return {k: rows[0][k] for k in ("available", "frozen", "debited")}


async def ops_for(http: httpx.AsyncClient, key: str) -> list[str]:
    r = await http.get("/ledger/_admin/ops", headers=ADMIN)
    assert r.status_code == 200
    return [op["op"] for op in r.json()["ops"] if op["key"] == key]


async def hold_call(http: httpx.AsyncClient, key: str, op: str, body: Any = None) -> httpx.Response:
    return await http.post(f"/ledger/v1/holds/{key}/{op}", json=body or {}, headers=ADMIN)


def freeze_body(provider: str, amount: str = "10.00", currency: str = "EUR") -> dict[str, str]:
    return {"provider": provider, "currency": currency, "amount": amount}


async def create_order(
    http: httpx.AsyncClient, provider: str, reference: str, amount: str = "10.00"
) -> httpx.Response:
    return await http.post(
        f"/providers/{provider}/v1/orders",
        json={"reference": reference, "amount": amount, "currency": "EUR"},
        headers={"Authorization": f"Bearer sk_{provider}", "Idempotency-Key": reference},
    )


async def order_status(http: httpx.AsyncClient, provider: str, reference: str) -> str | None:
    r = await http.get(
        f"/providers/{provider}/v1/orders/{reference}",
        headers={"Authorization": f"Bearer sk_{provider}"},
    )
    return r.json()["status"] if r.status_code == 200 else None


async def admin_orders(http: httpx.AsyncClient, reference: str) -> list[dict[str, Any]]:
    r = await http.get("/providers/_admin/orders", params={"reference": reference}, headers=ADMIN)
    assert r.status_code == 200
    orders: list[dict[str, Any]] = r.json()["orders"]
    return orders


def assert_signed(received: Received) -> None:
    secret = SECRETS[received.provider]
    verified = verify(
        [secret], received.headers, received.body, now=int(time.time()), tolerance_s=60
    )
    assert verified.webhook_id.startswith("msg_")
    with pytest.raises(WebhookRejected):
        verify(
            [new_secret()], received.headers, received.body, now=int(time.time()), tolerance_s=60
        )


# -- ledger -----------------------------------------------------------------


async def test_healthz_and_auth(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = await http.get("/ledger/v1/balances", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert (await http.get("/ledger/_admin/ops", headers=headers)).status_code == 401
    assert (await http.get("/providers/_admin/orders")).status_code == 401


async def test_freeze_commit_and_replays(http: httpx.AsyncClient) -> None:
    provider, key = await ledger_provider(http), unique("task")
    r = await hold_call(http, key, "freeze", freeze_body(provider, "10.5"))
    assert r.status_code == 200, r.text
    hold = r.json()
    assert (hold["status"], hold["amount"], hold["provider"]) == ("frozen", "10.50", provider)
    # Same body, written differently: still a replay, no second freeze.
    replay = await hold_call(http, key, "freeze", freeze_body(provider, "10.50"))
    # the answer says it was there before: a caller that lost its record learns it
    assert replay.status_code == 200 and replay.json() == {**hold, "replayed": True}
    assert hold["replayed"] is False
    assert await balance(http, provider) == {
        "available": "89.50",
        "frozen": "10.50",
        "debited": "0.00",
    }
    conflict = await hold_call(http, key, "freeze", freeze_body(provider, "10.51"))
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"

    for _ in range(2):
        r = await hold_call(http, key, "commit")
        assert r.status_code == 200 and r.json()["status"] == "committed"
    late_freeze = await hold_call(http, key, "freeze", freeze_body(provider, "10.50"))
    assert late_freeze.status_code == 200 and late_freeze.json()["status"] == "committed"
    assert await balance(http, provider) == {
        "available": "89.50",
        "frozen": "0.00",
        "debited": "10.50",
    }
    r = await hold_call(http, key, "rollback")
    assert r.status_code == 409 and r.json()["error"]["code"] == "hold_committed"
    got = await http.get(f"/ledger/v1/holds/{key}", headers=ADMIN)
    assert got.status_code == 200 and got.json()["status"] == "committed"
    listed = (await http.get("/ledger/v1/holds", headers=ADMIN)).json()["holds"]
    assert [h["status"] for h in listed if h["key"] == key] == ["committed"]
    assert await ops_for(http, key) == ["freeze", "commit"]


async def test_rollback_returns_money_and_replays(http: httpx.AsyncClient) -> None:
    provider, key = await ledger_provider(http), unique("task")
    assert (await hold_call(http, key, "freeze", freeze_body(provider, "30"))).status_code == 200
    for _ in range(2):
        r = await hold_call(http, key, "rollback")
        assert r.status_code == 200
        assert (r.json()["status"], r.json()["amount"]) == ("released", "30.00")
    assert await balance(http, provider) == {
        "available": "100.00",
        "frozen": "0.00",
        "debited": "0.00",
    }
    r = await hold_call(http, key, "commit")
    assert r.status_code == 409 and r.json()["error"]["code"] == "hold_released"
    assert await ops_for(http, key) == ["freeze", "rollback"]


async def test_unknown_hold(http: httpx.AsyncClient) -> None:
    key = unique("nope")
    for r in (
        await hold_call(http, key, "commit"),
        await http.get(f"/ledger/v1/holds/{key}", headers=ADMIN),
    ):
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "hold_not_found"
    assert await ops_for(http, key) == []


async def test_void_tombstone_blocks_late_freeze(http: httpx.AsyncClient) -> None:
    provider, key = await ledger_provider(http), unique("task")
    r = await hold_call(http, key, "rollback")
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["amount"]) == ("released", None)
    late = await hold_call(http, key, "freeze", freeze_body(provider))
    assert late.status_code == 409 and late.json()["error"]["code"] == "hold_released"
    assert (await hold_call(http, key, "rollback")).status_code == 200
    assert (await hold_call(http, key, "commit")).status_code == 409
    assert await balance(http, provider) == {
        "available": "100.00",
        "frozen": "0.00",
        "debited": "0.00",
    }
    assert await ops_for(http, key) == ["void"]


async def test_insufficient_balance_freezes_nothing(http: httpx.AsyncClient) -> None:
    provider, key = await ledger_provider(http, "5.00"), unique("task")
    r = await hold_call(http, key, "freeze", freeze_body(provider, "5.01"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "insufficient_balance"
    assert await balance(http, provider) == {
        "available": "5.00",
        "frozen": "0.00",
        "debited": "0.00",
    }
    assert (await http.get(f"/ledger/v1/holds/{key}", headers=ADMIN)).status_code == 404
    assert await ops_for(http, key) == []
    # Unknown provider/currency has no balance at all: the same definitive answer.
    r = await hold_call(http, key, "freeze", freeze_body(unique("ghost")))
    assert r.status_code == 422 and r.json()["error"]["code"] == "insufficient_balance"
    # The exact balance is enough.
    assert (await hold_call(http, key, "freeze", freeze_body(provider, "5"))).status_code == 200


@pytest.mark.parametrize(
    "amount", ["1e2", " 5 ", "1.234", "١٢٣", "-1", "01", "1.", ".5", "0", "5\n", 5, 5.0, None]
)
async def test_strict_amounts_rejected(http: httpx.AsyncClient, amount: Any) -> None:
    provider, key = await ledger_provider(http), unique("task")
    r = await hold_call(http, key, "freeze", freeze_body(provider, amount))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert await balance(http, provider) == {
        "available": "100.00",
        "frozen": "0.00",
        "debited": "0.00",
    }


async def test_invalid_requests(http: httpx.AsyncClient) -> None:
    provider, key = await ledger_provider(http), unique("task")
    bodies: list[Any] = [
        {"provider": provider, "currency": "eur", "amount": "1.00"},
        {"provider": "", "currency": "EUR", "amount": "1.00"},
        {"currency": "EUR", "amount": "1.00"},
        [1, 2],
    ]
    for body in bodies:
        r = await hold_call(http, key, "freeze", body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = await http.post(f"/ledger/v1/holds/{key}/freeze", content=b"{not json", headers=ADMIN)
    assert r.status_code == 422


async def test_currency_exponents(http: httpx.AsyncClient) -> None:
    provider = unique("lp")
    for currency, available in (("JPY", "1000"), ("KWD", "2.5")):
        r = await http.put(
            f"/ledger/_admin/balances/{provider}/{currency}",
            json={"available": available},
            headers=ADMIN,
        )
        assert r.status_code == 200
    jpy = await hold_call(http, unique("t"), "freeze", freeze_body(provider, "999", "JPY"))
    assert jpy.json()["amount"] == "999"
    bad_jpy = await hold_call(http, unique("t"), "freeze", freeze_body(provider, "1.0", "JPY"))
    assert bad_jpy.status_code == 422
    kwd = await hold_call(http, unique("t"), "freeze", freeze_body(provider, "1.234", "KWD"))
    assert kwd.json()["amount"] == "1.234"
    assert await balance(http, provider, "KWD") == {
        "available": "1.266",
        "frozen": "1.234",
        "debited": "0.000",
    }


async def test_concurrent_replays_freeze_once(http: httpx.AsyncClient) -> None:
    provider, key = await ledger_provider(http), unique("task")
    answers = await asyncio.gather(
        *(hold_call(http, key, "freeze", freeze_body(provider, "7.00")) for _ in range(8))
    )
    assert {r.status_code for r in answers} == {200}
    commits = await asyncio.gather(*(hold_call(http, key, "commit") for _ in range(4)))
    assert {r.status_code for r in commits} == {200}
    assert await balance(http, provider) == {
        "available": "93.00",
        "frozen": "0.00",
        "debited": "7.00",
    }
    assert await ops_for(http, key) == ["freeze", "commit"]


async def test_freeze_racing_rollback_never_leaks(http: httpx.AsyncClient) -> None:
    provider = await ledger_provider(http)
    keys = [unique("race") for _ in range(6)]
    await asyncio.gather(
        *(hold_call(http, k, "freeze", freeze_body(provider, "1.00")) for k in keys),
        *(hold_call(http, k, "rollback") for k in keys),
    )
    # Whatever the interleaving, every key ends released and no money stays frozen.
    for k in keys:
        r = await http.get(f"/ledger/v1/holds/{k}", headers=ADMIN)
        assert r.json()["status"] == "released"
    assert await balance(http, provider) == {
        "available": "100.00",
        "frozen": "0.00",
        "debited": "0.00",
    }


async def test_injected_faults_do_nothing(http: httpx.AsyncClient) -> None:
    provider, key = await ledger_provider(http), unique("task")
    r = await http.put("/ledger/_admin/faults", json={"error_rate": 1, "seed": 7}, headers=ADMIN)
    assert r.status_code == 200
    try:
        r = await hold_call(http, key, "freeze", freeze_body(provider))
        assert r.status_code == 503 and r.json()["error"]["code"] == "injected_fault"
    finally:
        off = await http.put("/ledger/_admin/faults", json={"error_rate": 0}, headers=ADMIN)
        assert off.status_code == 200
    assert (await http.get(f"/ledger/v1/holds/{key}", headers=ADMIN)).status_code == 404
    assert await balance(http, provider) == {
        "available": "100.00",
        "frozen": "0.00",
        "debited": "0.00",
    }
    bad = await http.put("/ledger/_admin/faults", json={"error_rate": 2}, headers=ADMIN)
    assert bad.status_code == 422


async def test_fault_after_applying_answers_500_but_the_hold_is_frozen(
    http: httpx.AsyncClient,
) -> None:
    provider, key = await ledger_provider(http), unique("task")
    faults = {"error_after_rate": 1, "seed": 7}
    assert (await http.put("/ledger/_admin/faults", json=faults, headers=ADMIN)).status_code == 200
    try:
        r = await hold_call(http, key, "freeze", freeze_body(provider))
        assert r.status_code == 500 and r.json()["error"]["code"] == "injected_after_apply"
    finally:
        off = await http.put("/ledger/_admin/faults", json={}, headers=ADMIN)
        assert off.status_code == 200
    hold = await http.get(f"/ledger/v1/holds/{key}", headers=ADMIN)
    assert hold.json()["status"] == "frozen"  # it was applied: only the answer was lost
    replay = await hold_call(http, key, "freeze", freeze_body(provider))
    assert replay.status_code == 200  # and the idempotent replay tells the truth
    bad = await http.put("/ledger/_admin/faults", json={"error_after_rate": -1}, headers=ADMIN)
    assert bad.status_code == 422


async def test_restart_keeps_ledger_state(
    http: httpx.AsyncClient, config: SandboxConfig, database_url: str
) -> None:
    r = await http.put(
        "/ledger/_admin/balances/instant/EUR", json={"available": "42.00"}, headers=ADMIN
    )
    assert r.status_code == 200
    # A second sandbox on the same database must not re-apply the config's balances.
    with ServerThread(build_app(config, database_url)) as second:
        async with httpx.AsyncClient(base_url=second.url) as client:
            assert (await balance(client, "instant"))["available"] == "42.00"


async def test_ledger_reset(http: httpx.AsyncClient) -> None:
    assert (await hold_call(http, unique("t"), "rollback")).status_code == 200
    assert (await http.post("/ledger/_admin/reset", headers=ADMIN)).status_code == 200
    assert (await http.get("/ledger/v1/holds", headers=ADMIN)).json() == {"holds": []}
    assert (await http.get("/ledger/_admin/ops", headers=ADMIN)).json() == {"ops": []}
    assert await balance(http, "decline", "JPY") == {
        "available": "5000",
        "frozen": "0",
        "debited": "0",
    }


# -- providers --------------------------------------------------------------

CREATE_ANSWERS = {
    "instant": (201, "succeeded"),
    "delayed_webhook": (201, "pending"),
    "accept_then_fail": (201, "pending"),
    "never_answers": (201, "pending"),
    "polling_only": (201, "pending"),
    "decline": (422, "declined"),
    "error_5xx": (503, "unavailable"),
    "error_5xx_after_create": (503, "unavailable"),
}


@pytest.mark.parametrize("behaviour", sorted(CREATE_ANSWERS))
async def test_create_answer_per_behaviour(http: httpx.AsyncClient, behaviour: str) -> None:
    reference = unique("ref")
    r = await create_order(http, behaviour, reference)
    status_code, status = CREATE_ANSWERS[behaviour]
    assert r.status_code == status_code, r.text
    if status_code < 300:
        assert r.json()["status"] == status and r.json()["reference"] == reference
        assert r.json()["id"].startswith("ord_")
    else:
        assert r.json()["error"]["code"] == status
    orders = await admin_orders(http, reference)
    made_order = behaviour not in {"decline", "error_5xx"}
    assert [o["creates"] for o in orders] == ([1] if made_order else [])


async def test_timeout_hangs_without_order(http: httpx.AsyncClient) -> None:
    reference = unique("ref")
    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            "/providers/timeout/v1/orders",
            json={"reference": reference, "amount": "1.00", "currency": "EUR"},
            headers={"Authorization": "Bearer sk_timeout", "Idempotency-Key": reference},
            timeout=0.3,
        )
    assert await admin_orders(http, reference) == []


async def test_replays_create_once(http: httpx.AsyncClient) -> None:
    reference = unique("ref")
    answers = await asyncio.gather(
        *(create_order(http, "never_answers", reference) for _ in range(5))
    )
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 200, 201]
    assert len({r.json()["id"] for r in answers}) == 1
    # An ambiguous 503 that did create: the retry finds the order.
    ref2 = unique("ref")
    assert (await create_order(http, "error_5xx_after_create", ref2)).status_code == 503
    retry = await create_order(http, "error_5xx_after_create", ref2)
    assert retry.status_code == 200 and retry.json()["reference"] == ref2
    # one order each, and every create call counted (the first and each replay)
    assert [o["creates"] for o in await admin_orders(http, reference)] == [5]
    assert [o["creates"] for o in await admin_orders(http, ref2)] == [2]


async def test_provider_request_errors(http: httpx.AsyncClient) -> None:
    ref = unique("ref")
    body = {"reference": ref, "amount": "1.00", "currency": "EUR"}
    url = "/providers/instant/v1/orders"
    auth = {"Authorization": "Bearer sk_instant"}
    cases: list[tuple[str, dict[str, str], Any, int, str]] = [
        ("/providers/nobody/v1/orders", auth, body, 404, "not_found"),
        (
            url,
            {"Authorization": "Bearer sk_decline", "Idempotency-Key": ref},
            body,
            401,
            "unauthorized",
        ),
        (url, auth, body, 400, "missing_idempotency_key"),
        (url, {**auth, "Idempotency-Key": "other"}, body, 400, "idempotency_key_mismatch"),
        (url, {**auth, "Idempotency-Key": ref}, {**body, "amount": "1e2"}, 400, "invalid_request"),
        (url, {**auth, "Idempotency-Key": ref}, {**body, "amount": 1}, 400, "invalid_request"),
    ]
    for path, headers, payload, status, code in cases:
        r = await http.post(path, json=payload, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert await admin_orders(http, ref) == []
    assert await order_status(http, "instant", ref) is None


@pytest.mark.parametrize(
    ("behaviour", "final", "webhook"),
    [
        ("instant", "succeeded", True),
        ("delayed_webhook", "succeeded", True),
        ("accept_then_fail", "failed", True),
        ("polling_only", "succeeded", False),
        ("error_5xx_after_create", "succeeded", False),
    ],
)
async def test_later_status_and_webhooks(
    http: httpx.AsyncClient, receiver: Receiver, behaviour: str, final: str, webhook: bool
) -> None:
    reference = unique("ref")
    await create_order(http, behaviour, reference)

    async def reached() -> str | None:
        status = await order_status(http, behaviour, reference)
        return status if status == final else None

    await eventually(reached)
    if not webhook:
        assert receiver.for_reference(reference) == []
        return
    [received] = await eventually(lambda: _async(receiver.for_reference(reference) or None))
    assert received.provider == behaviour
    assert received.data["status"] == final and received.data["reference"] == reference
    assert json.loads(received.body)["type"] == "order.updated"
    assert_signed(received)


async def test_never_answers_stays_pending(http: httpx.AsyncClient, receiver: Receiver) -> None:
    reference = unique("ref")
    await create_order(http, "never_answers", reference)
    # Compare against a sibling order that does move after the same delay.
    sibling = unique("ref")
    await create_order(http, "polling_only", sibling)
    await eventually(lambda: _async_if(order_status(http, "polling_only", sibling), "succeeded"))
    assert await order_status(http, "never_answers", reference) == "pending"
    assert receiver.for_reference(reference) == []


async def test_webhook_retried_with_same_id(http: httpx.AsyncClient, receiver: Receiver) -> None:
    reference = unique("ref")
    with receiver.lock:
        receiver.failures[reference] = 2
    await create_order(http, "instant", reference)
    deliveries = await eventually(
        lambda: _async(
            received if len(received := receiver.for_reference(reference)) >= 3 else None
        )
    )
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    for delivery in deliveries:
        assert_signed(delivery)


async def test_admin_resend_webhook(http: httpx.AsyncClient, receiver: Receiver) -> None:
    reference = unique("ref")
    await create_order(http, "never_answers", reference)
    r = await http.post(
        "/providers/_admin/never_answers/webhook",
        json={"reference": reference, "status": "failed", "webhook_id": "msg_dup1"},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    assert r.json()["webhook_id"] == "msg_dup1" and r.json()["delivered"] is True
    [received] = receiver.for_reference(reference)
    assert received.headers["webhook-id"] == "msg_dup1"
    assert received.data["status"] == "failed"
    assert_signed(received)
    # The order itself did not change.
    assert await order_status(http, "never_answers", reference) == "pending"
    missing = await http.post(
        "/providers/_admin/never_answers/webhook", json={"reference": "nope"}, headers=ADMIN
    )
    assert missing.status_code == 404


async def test_admin_update_and_create_provider(http: httpx.AsyncClient) -> None:
    name = unique("p").replace("-", "_")
    r = await http.put(f"/providers/_admin/{name}", json={"behaviour": "decline"}, headers=ADMIN)
    assert r.status_code == 422  # a new provider needs its credentials
    secret = new_secret()
    r = await http.put(
        f"/providers/_admin/{name}",
        json={"behaviour": "decline", "api_key": f"sk_{name}", "webhook_secret": secret},
        headers=ADMIN,
    )
    assert r.status_code == 200 and "api_key" not in r.json()
    assert (await create_order(http, name, unique("ref"))).status_code == 422
    r = await http.put(
        f"/providers/_admin/{name}", json={"behaviour": "never_answers"}, headers=ADMIN
    )
    assert r.json()["behaviour"] == "never_answers"
    assert (await create_order(http, name, unique("ref"))).status_code == 201
    bad = await http.put(f"/providers/_admin/{name}", json={"behaviour": "explode"}, headers=ADMIN)
    assert bad.status_code == 422


async def test_provider_reset(http: httpx.AsyncClient) -> None:
    reference = unique("ref")
    await create_order(http, "never_answers", reference)
    assert (await http.post("/providers/_admin/reset", headers=ADMIN)).status_code == 200
    assert await admin_orders(http, reference) == []


async def _async(value: T) -> T:
    return value


async def _async_if(status: Awaitable[str | None], wanted: str) -> str | None:
    return wanted if await status == wanted else None
