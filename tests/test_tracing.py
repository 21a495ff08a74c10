"""OpenTelemetry: one trace per withdrawal, across the API and the workers.

The stack writes each process's spans as JSON lines (PAYMENT_TRACE_DIR, the same
SDK pipeline an OTLP exporter would get), and runs every step as a job
(INLINE_STEPS=0), so the steps run in worker processes, not in the API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sandbox.client import StackClient
from sandbox.servers import NatsServer
from sandbox.stack import ProviderSpec, Stack, wait_until
from tests.conftest import FAST_TIMING, own_stack

CALLER = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def traced(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("traced")
    specs = [ProviderSpec("alpha", behaviour="delayed_webhook", timing=FAST_TIMING)]
    env = {"PAYMENT_TRACE_DIR": str(workdir / "spans"), "INLINE_STEPS": "0"}
    with own_stack("_traced", workdir, specs, nats_server.url, extra_env=env) as stack:
        yield stack


def test_a_withdrawal_is_one_trace_across_processes(traced: Stack) -> None:
    client = StackClient(traced)
    response = client.api.post(
        "/v1/withdrawals",
        json={
            "order_id": "traced-1",
            "merchant_id": "m-1",
            "amount": "12.50",
            "currency": "EUR",
            "cascade": ["alpha"],
        },
        headers={"traceparent": f"00-{CALLER}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 201, response.text
    assert client.wait_final(response.json()["id"])["status"] == "COMPLETED"
    spans = wait_until(lambda: spans_with_commit(traced), 15, "the commit's span")

    names = {s["name"] for s in spans}
    assert "POST /v1/withdrawals" in names  # the submission (the caller's trace)
    assert {"step freeze", "step create_order", "step commit"} <= names
    assert "transition provider_succeeded" in names  # the webhook, applied in the API
    assert any(s["kind"] == "SpanKind.CLIENT" and "/orders" in s["name"] for s in spans)
    assert any(s["kind"] == "SpanKind.CLIENT" and "/commit" in s["name"] for s in spans)

    by_id = {s["context"]["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent_id"] is None or s["parent_id"] == "0x00f067aa0ba902b7"]
    assert [r["name"] for r in roots] == ["POST /v1/withdrawals"]
    for span in spans:  # every other span hangs off a span of this trace
        if span not in roots:
            assert span["parent_id"] in by_id, span["name"]
    steps = [s for s in spans if s["name"].startswith("step ")]
    api = {s["resource"]["attributes"]["service.name"] for s in roots}
    workers = {s["resource"]["attributes"]["service.name"] for s in steps}
    assert api == {"payment-service-api"} and workers == {"payment-service-worker"}
    for span in spans:  # ids and states, never amounts or secrets
        assert "12.50" not in json.dumps(span["attributes"])
        assert "1250" not in json.dumps(span["attributes"])

    with psycopg.connect(traced.database_url) as conn:
        stored = conn.execute(
            "SELECT trace_id FROM order_queues WHERE order_id = 'traced-1'"
        ).fetchone()
    assert stored == (CALLER,)  # logs and the audit trail carry the same trace id


def spans_with_commit(stack: Stack) -> list[dict[str, Any]] | None:
    spans = [
        json.loads(line)
        for path in Path(stack.workdir / "spans").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    ours = [s for s in spans if s["context"]["trace_id"] == f"0x{CALLER}"]
    return ours if any(s["name"] == "step commit" for s in ours) else None
