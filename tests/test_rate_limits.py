"""Limits on the inbound API: each key's token bucket and requests in flight, and
each provider's webhook ingest. Over a limit is a 429 with Retry-After that
changes nothing; another key keeps its whole rate. Keys come from the command
line (`python -m service.ops keys create`), as an operator would make them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from activities.standard_webhooks import new_secret, signed_headers
from devstack.embedded import PROJECT_ROOT
from sandbox import issuer
from sandbox.servers import NatsServer
from sandbox.stack import ProviderSpec, Stack, wait_until
from tests.conftest import FAST_TIMING, own_stack
from tests.openapi_contract import hook

RATE, BURST = 2.0, 4  # each test key's bucket
WEBHOOK_RATE, WEBHOOK_BURST = 0.5, 3


@pytest.fixture(scope="module")
def limited(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """alpha takes orders and never answers: the only webhooks are the tests' own."""
    specs = [ProviderSpec("alpha", behaviour="never_answers", timing=FAST_TIMING)]
    env = {"WEBHOOK_RATE_PER_S": str(WEBHOOK_RATE), "WEBHOOK_BURST": str(WEBHOOK_BURST)}
    workdir = tmp_path_factory.mktemp("limits")
    with own_stack("_limits", workdir, specs, nats_server.url, workers=1, extra_env=env) as stack:
        yield stack


def cli_key(stack: Stack, *options: str) -> str:
    """A new key with all scopes, made by the ops command line as ada (an admin at the
    stack's issuer); its value."""
    scopes = [f"--scope=withdrawals:{s}" for s in ("submit", "read", "cancel")]
    command = [sys.executable, "-m", "service.ops", "--json", "keys", "create", *scopes]
    env = {**stack.env(), "OPS_ACCESS_TOKEN": issuer.access_token(stack.issuer_url, "ada")}
    printed = subprocess.run(
        [*command, "--client=limits", *options],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        check=True,
    )
    return str(json.loads(printed.stdout)[0]["secret"])


def _api(stack: Stack, key: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=stack.api_url, headers=headers, event_hooks={"response": [hook]})


def _body(order_id: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "merchant_id": "m-1",
        "amount": "10.00",
        "currency": "EUR",
        "cascade": ["alpha"],
    }


def _paced(api: httpx.Client, prefix: str, rate: float, seconds: float) -> dict[str, int]:
    """Submit at `rate` per second for `seconds`: each order id and its status."""
    started, answers = time.monotonic(), {}
    for i in range(int(rate * seconds)):
        time.sleep(max(0.0, started + i / rate - time.monotonic()))  # load pacing
        order_id = f"{prefix}-{i:04d}"
        answer = api.post("/v1/withdrawals", json=_body(order_id))
        if answer.status_code == 429:  # the error object says how long, as the header does
            wait = answer.json()["error"]["retry_after_s"]
            assert wait >= 1 and answer.headers["Retry-After"] == str(wait)
        answers[order_id] = answer.status_code
    return answers


def _stored(stack: Stack, prefix: str) -> set[str]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT order_id FROM order_queues WHERE order_id LIKE %s", (f"{prefix}-%",)
        ).fetchall()
    return {order_id for (order_id,) in rows}


def test_a_key_at_five_times_its_rate_gets_429s_that_change_nothing(limited: Any) -> None:
    options = (f"--rate-per-s={RATE}", f"--burst={BURST}")
    flooder, neighbour = cli_key(limited, *options), cli_key(limited, *options)
    prefix, calm = f"flood-{uuid.uuid4().hex[:6]}", f"calm-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        flood = pool.submit(_paced, _api(limited, flooder), prefix, 5 * RATE, 3.0)
        steady = pool.submit(_paced, _api(limited, neighbour), calm, RATE, 3.0)
        answers, others = flood.result(), steady.result()
    elapsed = time.monotonic() - started
    admitted = {order_id for order_id, status in answers.items() if status == 201}
    assert set(answers.values()) == {201, 429}, answers
    assert BURST <= len(admitted) <= BURST + RATE * elapsed + 1
    assert _stored(limited, prefix) == admitted  # no refused request left a row
    assert set(others.values()) == {201}, others  # the other key kept its whole rate


def _slow_body(order_id: str, go: threading.Event) -> Iterator[bytes]:
    """A body whose last bytes wait for `go`: the request stays in flight till then."""
    body = json.dumps(_body(order_id)).encode()
    yield body[:10]
    assert go.wait(30)
    yield body[10:]


def _in_flight(stack: Stack, prefix: str) -> int:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute(
            "SELECT cardinality(leases) FROM api_keys WHERE prefix = %s", (prefix,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_key_at_its_concurrency_limit_gets_a_429_until_a_request_ends(limited: Any) -> None:
    key = cli_key(limited, "--max-in-flight=1")
    api, go = _api(limited, key), threading.Event()
    headers = {"Content-Type": "application/json"}
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            api.post, "/v1/withdrawals", content=_slow_body("conc-slow", go), headers=headers
        )
        wait_until(lambda: _in_flight(limited, key[4:16]) == 1, 10, "the slow request's slot")
        busy = api.post("/v1/withdrawals", json=_body(f"conc-{uuid.uuid4().hex[:6]}"))
        assert (busy.status_code, busy.headers["Retry-After"]) == (429, "1")
        go.set()
        assert slow.result().status_code == 201
    assert _in_flight(limited, key[4:16]) == 0  # its slot given back
    assert api.post("/v1/withdrawals", json=_body("conc-after")).status_code == 201
    assert _stored(limited, "conc") == {"conc-slow", "conc-after"}


def _webhook(stack: Stack, webhook_id: str, secret: str | None = None) -> httpx.Response:
    body = json.dumps(
        {
            "type": "order.updated",
            "data": {"id": "ord_x", "reference": str(uuid.uuid4()), "status": "succeeded"},
        }
    ).encode()
    secret = secret or stack.secrets["alpha"]
    headers = signed_headers(secret, webhook_id, int(time.time()), body)
    headers["Content-Type"] = "application/json"
    with httpx.Client(base_url=stack.api_url, event_hooks={"response": [hook]}) as http:
        return http.post("/webhooks/alpha", content=body, headers=headers)


def _answered(stack: Stack) -> dict[str, float]:
    """alpha's verified webhooks by the class of the API's answer (webhook_answers_total)."""
    text = httpx.get(f"{stack.api_url}/metrics", timeout=5).text
    return {
        s.labels["code"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "webhook_answers_total" and s.labels["provider"] == "alpha"
    }


def test_webhooks_over_the_provider_limit_are_429_and_not_stored(limited: Any) -> None:
    ids = [f"msg_limit_{uuid.uuid4().hex}" for _ in range(3 * WEBHOOK_BURST)]
    before = _answered(limited)
    started = time.monotonic()
    answers = {webhook_id: _webhook(limited, webhook_id) for webhook_id in ids}
    elapsed = time.monotonic() - started
    accepted = {i for i, a in answers.items() if a.status_code == 202}
    refused = [a for a in answers.values() if a.status_code == 429]
    assert len(accepted) + len(refused) == len(ids)
    assert WEBHOOK_BURST <= len(accepted) <= WEBHOOK_BURST + WEBHOOK_RATE * elapsed + 1
    assert all(a.headers["Retry-After"] == "2" for a in refused)  # 1 / 0.5 per second
    # The bucket is empty now, yet a forgery is a 401: verified before a token is taken.
    assert _webhook(limited, "msg_forged", secret=new_secret()).status_code == 401
    # The webhook objective's events: each verified one by our answer; a forgery is none.
    after = _answered(limited)
    assert after["2xx"] - before["2xx"] == len(accepted)
    assert after["4xx"] - before["4xx"] == len(refused)
    with psycopg.connect(limited.database_url) as conn:
        rows = conn.execute(
            "SELECT webhook_id FROM webhook_inbox WHERE webhook_id = ANY(%s)", (ids,)
        ).fetchall()
    assert {webhook_id for (webhook_id,) in rows} == accepted
