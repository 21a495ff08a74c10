"""Metrics, structured logs, trace propagation and cascade-core notifications."""

from __future__ import annotations

import json
import secrets
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from sandbox.client import StackClient
from sandbox.stack import wait_until

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(client: StackClient) -> defaultdict[Sample, float]:
    """Every sample of every process of the stack, summed (as Prometheus would)."""
    totals: defaultdict[Sample, float] = defaultdict(float)
    for url in client.stack.metrics_urls():
        text = httpx.get(url, timeout=5).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                totals[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return totals


def delta(
    after: defaultdict[Sample, float], before: defaultdict[Sample, float], name: str, **labels: str
) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after[key] - before[key]


def outcomes(client: StackClient) -> dict[str, dict[str, Any]]:
    rows = client.sandbox.get("/core/_admin/outcomes").json()["outcomes"]
    return {r["key"]: r for r in rows}


def test_metrics_after_a_scenario(client: StackClient, migrated_url: str) -> None:
    client.set_provider("alpha", behaviour="decline")
    client.set_provider("beta", behaviour="delayed_webhook", webhook_delay_ms=200)
    before = scrape(client)
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    client.wait_final(queue_id)
    wait_until(lambda: queue_id in outcomes(client), 20, "the core notification")
    after = scrape(client)

    events = client.events(queue_id)
    pairs = Counter((e["from_state"], e["to_state"]) for e in events if e["task_id"])
    for (src, dst), n in pairs.items():
        assert delta(after, before, "task_transitions_total", from_state=src, to_state=dst) == n
    completed = {"policy": "cascade", "status": "COMPLETED"}  # the shared stack's rollout
    assert delta(after, before, "withdrawal_outcomes_total", **completed) == 1
    assert (
        delta(
            after,
            before,
            "provider_outcomes_total",
            provider="alpha",
            call="create",
            outcome="declined",
        )
        == 1
    )
    assert (
        delta(
            after,
            before,
            "provider_outcomes_total",
            provider="beta",
            call="create",
            outcome="accepted",
        )
        == 1
    )
    assert (
        delta(after, before, "webhook_verifications_total", provider="beta", result="accepted") == 1
    )
    assert delta(after, before, "ledger_call_seconds_count", operation="freeze") == 2
    assert delta(after, before, "ledger_call_seconds_count", operation="rollback") == 1
    assert delta(after, before, "ledger_call_seconds_count", operation="commit") == 1
    assert delta(after, before, "core_notifications_total", result="delivered") == 1
    in_creating = delta(after, before, "task_time_in_state_seconds_count", state="CREATING")
    assert in_creating == sum(n for (src, _), n in pairs.items() if src == "CREATING")
    with psycopg.connect(migrated_url) as conn:
        dlq = conn.execute("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL").fetchone()
    assert after[("dlq_size", ())] == (dlq[0] if dlq else 0)
    for gauge in ("outbox_lag_seconds", "outbox_unpublished", "manual_check_queue"):
        assert (gauge, ()) in after


def test_timer_lateness_is_measured(client: StackClient) -> None:
    before = scrape(client)
    client.set_provider("alpha", behaviour="error_5xx")  # ambiguous: recheck timers
    client.wait_final(client.submit(["alpha", "beta"]).json()["id"])
    after = scrape(client)
    assert delta(after, before, "timer_lateness_seconds_count") >= 1
    assert delta(after, before, "timer_lateness_seconds_bucket", le="1.0") == delta(
        after, before, "timer_lateness_seconds_count"
    )  # every timer fired within 1 s


def test_every_log_line_is_json_with_the_ids_and_the_trace(client: StackClient) -> None:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    body = {
        "order_id": f"ord-{secrets.token_hex(6)}",
        "merchant_id": "m-1",
        "amount": "5.00",
        "currency": "EUR",
        "cascade": ["alpha"],
    }
    queue_id = client.api.post("/v1/withdrawals", json=body, headers=headers).json()["id"]
    view = client.wait_final(queue_id)
    assert {e["trace_id"] for e in client.events(queue_id)} == {trace_id}
    mine = []
    for path in Path(client.stack.workdir).glob("*.log"):
        if path.name.startswith(("sandbox", "issuer")):
            continue  # the sandbox and the issuer stand for other companies' systems
        for line in path.read_text().splitlines():
            record = json.loads(line)  # every line parses
            assert {"order_id", "queue_id", "task_id", "trace_id"} <= record.keys(), line
            if record["queue_id"] == queue_id:
                mine.append(record)
    assert mine, "no log line mentions the withdrawal"
    assert {r["trace_id"] for r in mine} == {trace_id}
    assert {r["order_id"] for r in mine} == {view["order_id"]}
    task_id = view["tasks"][0]["id"]
    # the steps' own lines (run right after each commit) carry the task's ids too
    assert any(r["task_id"] == task_id and r["logger"] == "payment.jobs" for r in mine)


def test_core_notification_is_retried_and_recorded_once(client: StackClient) -> None:
    client.sandbox.put("/core/_admin/faults", json={"error_rate": 0.6, "seed": 3})
    try:
        ids = [client.submit(["alpha"]).json()["id"] for _ in range(4)]
        for queue_id in ids:
            client.wait_final(queue_id)
        wait_until(lambda: set(ids) <= set(outcomes(client)), 60, "every notification")
    finally:
        client.sandbox.put("/core/_admin/faults", json={"error_rate": 0.0})
    got = outcomes(client)
    assert {got[i]["body"]["status"] for i in ids} == {"COMPLETED"}
    assert all(got[i]["body"]["provider"] == "alpha" for i in ids)
    assert all(got[i]["deliveries"] == 1 for i in ids)  # recorded once: retries were refused


def test_undeliverable_notification_is_dead_lettered_then_replayed(client: StackClient) -> None:
    client.sandbox.put("/core/_admin/faults", json={"error_rate": 1.0})
    try:
        queue_id = client.submit(["alpha"]).json()["id"]
        client.wait_final(queue_id)

        def letter() -> dict[str, Any] | None:
            letters = client.ops.get("/ops/v1/dead-letters").json()["dead_letters"]
            return next((d for d in letters if d["queue_id"] == queue_id), None)

        dead = wait_until(letter, 30, "the notification to be dead-lettered", every=0.2)
        assert (dead["task_name"], dead["task_id"]) == ("notify", None)
    finally:
        client.sandbox.put("/core/_admin/faults", json={"error_rate": 0.0})
    replay = client.ops.post(f"/ops/v1/dead-letters/{dead['id']}/replay", json={"operator": "ana"})
    assert replay.status_code == 202
    wait_until(lambda: queue_id in outcomes(client), 20, "the replayed notification")
