"""Health- and limit-aware routing against the sandbox, on its own stack (a
provider's circuit is shared state): circuits open and close from outcomes,
unhealthy providers are deferred without a freeze or a call and tried once every
healthier one has failed (version 4), a withdrawal past its wait bound tries its
unhealthy providers, limits hold across workers, and a 429 is waited out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sandbox.client import StackClient
from sandbox.servers import NatsServer
from sandbox.stack import ProviderSpec, Stack, wait_until
from tests.conftest import FAST_TIMING, assert_ledger_matches_every_task, own_stack

FAILING = {
    "window_s": 30.0,
    "min_calls": 3,
    "max_failure_ratio": 0.5,
    "open_s": 3.0,
    "probes": 1,
    "failures": ["declined", "ambiguous", "timed_out", "failed"],
}
STAYS_OPEN = FAILING | {"open_s": 600.0}
SPECS = [
    ProviderSpec("flaky", behaviour="decline", timing=FAST_TIMING, health=FAILING),
    ProviderSpec("dead", timing=FAST_TIMING, health=FAILING),
    ProviderSpec("steady", timing=FAST_TIMING),
    ProviderSpec(
        "narrow",
        behaviour="delayed_webhook",
        webhook_delay_ms=400,
        timing=FAST_TIMING,
        limits={"max_in_flight": 2},
    ),
    ProviderSpec("metered", timing=FAST_TIMING, limits={"rate_per_s": 2.0, "burst": 1}),
    ProviderSpec("throttler", behaviour="throttle_once", webhook_delay_ms=100, timing=FAST_TIMING),
    # Version 4's deferral: shy recovers soon after its circuit opens, sick stays
    # open far past the wait bound (HEALTH_MAX_WAIT_S below); nope always declines.
    ProviderSpec("shy", behaviour="decline", timing=FAST_TIMING, health=FAILING),
    ProviderSpec("sick", behaviour="decline", timing=FAST_TIMING, health=STAYS_OPEN),
    ProviderSpec("nope", behaviour="decline", timing=FAST_TIMING),
]


@pytest.fixture(scope="module")
def routing_stack(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("routing")
    rollout = workdir / "rollout.toml"
    rollout.write_text('[merchants]\nplain = "cascade"\n')  # everyone else: health_cascade
    env = {"ROLLOUT_FILE": str(rollout), "HEALTH_MAX_WAIT_S": "4"}
    with own_stack("_routing", workdir, SPECS, nats_server.url, extra_env=env) as stack:
        yield stack


@pytest.fixture
def client(routing_stack: Stack) -> Iterator[StackClient]:
    c = StackClient(routing_stack)
    yield c
    assert_ledger_matches_every_task(c, routing_stack.database_url)


def test_a_failing_provider_is_skipped_until_a_probe_finds_it_healthy(
    client: StackClient,
) -> None:
    url = client.stack.database_url
    for _ in range(3):  # three declines of three calls: past the threshold
        assert final(client, ["flaky", "steady"])["status"] == "COMPLETED"
    wait_until(lambda: circuit(url, "flaky") == "open", 10, "flaky's circuit to open")

    skipped = final(client, ["flaky", "steady"])
    flaky, steady = skipped["tasks"]
    assert (flaky["status"], steady["status"]) == ("SKIPPED", "SUCCEEDED")
    assert task_reason(url, flaky["id"]) == "provider_unhealthy"
    # No freeze: its key was only voided once the ledger said nothing was there
    # (version 3: no timeline the database might have lost had started it).
    assert client.ledger_ops()[flaky["id"]] == ["void"]
    assert not orders_for(client, flaky["id"])  # no call
    skip = [e for e in client.events(skipped["id"]) if e.get("task_id") == flaky["id"]]
    # Deferred (the ledger asked, nothing voided), then, once steady paid, ended
    # through version 3's skip, which voids the key.
    assert [(e["from_state"], e["to_state"], e["event_type"]) for e in skip] == [
        ("PENDING", "PENDING", "defer"),
        ("PENDING", "PENDING", "no_hold"),
        ("PENDING", "PENDING", "skip"),
        ("PENDING", "SKIPPED", "key_voided"),
    ]
    assert skip[0]["payload"]["reason"] == "provider_unhealthy_deferred"
    assert skip[2]["payload"]["reason"] == "provider_unhealthy"
    assert metric_sum(client, 'routing_skips_total{provider="flaky",reason="provider_unhealthy"}')

    # Alone in its cascade, a withdrawal waits for the probe instead of failing.
    client.set_provider("flaky", behaviour="instant", webhook_delay_ms=50)
    waiting = client.submit(["flaky"]).json()["id"]
    wait_until(
        lambda: task_reason(url, first_task(client, waiting)) == "all_providers_unhealthy",
        10,
        "the lone withdrawal to wait",
    )
    assert client.wait_final(waiting, timeout=30)["status"] == "COMPLETED"  # it was the probe
    wait_until(lambda: circuit(url, "flaky") == "closed", 10, "the probe to close it")
    assert circuit_path(url, "flaky") == ["open", "half_open", "closed"]
    after = final(client, ["flaky", "steady"])
    assert [t["status"] for t in after["tasks"]] == ["SUCCEEDED", "CANCELLED"]


def test_a_withdrawal_waits_a_bounded_time_when_every_provider_is_down(
    client: StackClient,
) -> None:
    url = client.stack.database_url
    forced = client.admin.post(
        "/ops/v1/providers/dead/circuit",
        json={"state": "open", "reason": "provider announced an outage"},
    )
    assert forced.status_code == 200, forced.text
    try:
        view = client.wait_final(client.submit(["dead"]).json()["id"], timeout=30)
        assert view["status"] == "FAILED"
        (task,) = view["tasks"]
        assert (task["status"], task["funds"]) == ("SKIPPED", "RELEASED")  # a voided key
        assert client.ledger_ops()[task["id"]] == ["void"]  # never frozen
        plain = final(client, ["dead", "steady"], merchant="plain")  # routing off: tried
        assert [t["status"] for t in plain["tasks"]] == ["SUCCEEDED", "CANCELLED"]
    finally:
        auto = {"state": "auto", "reason": "outage over"}
        assert client.admin.post("/ops/v1/providers/dead/circuit", json=auto).status_code == 200
    with psycopg.connect(url) as conn:
        audit = conn.execute(
            "SELECT to_state, actor, reason FROM provider_circuit_events"
            " WHERE provider = 'dead' ORDER BY id"
        ).fetchall()
    ada = f"person:ada@example.com (sub ada at {client.stack.issuer_url})"  # signed in
    assert audit == [
        ("forced_open", ada, "provider announced an outage"),
        ("automatic", ada, "outage over"),
    ]


def test_a_provider_deferred_early_pays_at_the_end_when_every_other_provider_declined(
    client: StackClient,
) -> None:
    url = client.stack.database_url
    open_circuit(client, "shy")
    client.set_provider("shy", behaviour="instant", webhook_delay_ms=50)  # recovered

    view = final(client, ["shy", "nope"])
    assert view["status"] == "COMPLETED"
    shy, nope = view["tasks"]
    assert (shy["status"], nope["status"]) == ("SUCCEEDED", "SKIPPED")  # nope declined
    events = client.events(view["id"])
    shy_types = [e["event_type"] for e in events if e.get("task_id") == shy["id"]]
    # Passed over (the ledger asked, the key not voided); tried once its circuit let
    # a probe through, maybe after waiting for it.
    assert shy_types[:2] == ["defer", "no_hold"] and "start" in shy_types, shy_types
    starts = [e["task_id"] for e in events if e["event_type"] == "start"]
    assert starts == [nope["id"], shy["id"]]  # the healthier provider had its turn first
    assert len(orders_for(client, shy["id"])) == 1
    assert client.ledger_ops()[shy["id"]] == ["freeze", "commit"]  # paid with its own key
    assert task_reason(url, nope["id"]) == "declined"


def test_a_lone_provider_unhealthy_past_the_wait_bound_is_tried_and_pays(
    client: StackClient,
) -> None:
    url = client.stack.database_url
    open_circuit(client, "sick")  # open for 600 s: no probe before the 4 s bound
    client.set_provider("sick", behaviour="instant", webhook_delay_ms=50)

    submitted = client.submit(["sick"]).json()["id"]
    view = client.wait_final(submitted, timeout=30)
    assert view["status"] == "COMPLETED"  # version 3 failed it untried
    (task,) = view["tasks"]
    types = [e["event_type"] for e in client.events(submitted) if e.get("task_id") == task["id"]]
    assert types[0] == "wait" and types.index("start") > types.index("timer_fired"), types
    assert len(orders_for(client, task["id"])) == 1
    assert client.ledger_ops()[task["id"]] == ["freeze", "commit"]
    assert circuit(url, "sick") == "open"  # tried as a probe, not closed by one answer


def test_concurrency_and_rate_limits_hold_across_workers(client: StackClient) -> None:
    narrow = [client.submit(["narrow"]).json()["id"] for _ in range(10)]
    metered = [client.submit(["metered"]).json()["id"] for _ in range(8)]
    for queue_id in narrow + metered:
        assert client.wait_final(queue_id, timeout=60)["status"] == "COMPLETED"
    assert client.provider_load("narrow")["peak_in_flight"] <= 2
    starts = start_times(client.stack.database_url, "metered")
    assert len(starts) == 8
    assert max_in_window(starts, 1.0) <= 2  # rate 2/s, burst 1, at start time
    assert starts[-1] - starts[0] >= 3.0  # 8 starts at 2/s
    held = metric_sum(client, 'routing_holds_total{provider="narrow",reason="concurrency_limit"}')
    assert held > 0


def test_a_429_with_retry_after_is_waited_out_then_succeeds(client: StackClient) -> None:
    view = final(client, ["throttler"])
    (task,) = view["tasks"]
    assert task["status"] == "SUCCEEDED"
    events = [e for e in client.events(view["id"]) if e.get("task_id") == task["id"]]
    names = [e["event_type"] for e in events]
    assert (
        names.index("order_throttled") < names.index("timer_fired") < names.index("order_accepted")
    )
    throttled = next(e for e in events if e["event_type"] == "order_throttled")
    accepted = next(e for e in events if e["event_type"] == "order_accepted")
    assert seconds_between(throttled, accepted) >= 1.0  # Retry-After: 1
    assert client.provider_load("throttler")["throttled"] == 1
    assert client.ledger_ops()[task["id"]] == ["freeze", "commit"]


# -- helpers ----------------------------------------------------------------------
def open_circuit(client: StackClient, provider: str) -> None:
    """Three declines of three calls (its rule counts them as failures): open."""
    client.set_provider(provider, behaviour="decline")
    for _ in range(3):
        assert final(client, [provider, "steady"])["status"] == "COMPLETED"
    url = client.stack.database_url
    wait_until(lambda: circuit(url, provider) == "open", 10, f"{provider}'s circuit to open")


def final(client: StackClient, cascade: list[str], merchant: str = "m-1") -> dict[str, Any]:
    response = client.submit(cascade, merchant_id=merchant)
    assert response.status_code == 201, response.text
    return client.wait_final(response.json()["id"], timeout=30)


def circuit(url: str, provider: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT state FROM provider_circuits WHERE provider = %s", (provider,)
        ).fetchone()
    return None if row is None else str(row[0])


def circuit_path(url: str, provider: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT to_state FROM provider_circuit_events WHERE provider = %s AND actor = 'health'"
            " ORDER BY id",
            (provider,),
        ).fetchall()
    return [str(r[0]) for r in rows]


def task_reason(url: str, task_id: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT last_reason FROM order_tasks WHERE id = %s", (task_id,))
        found = row.fetchone()
    return None if found is None else found[0]


def first_task(client: StackClient, queue_id: str) -> str:
    return str(client.withdrawal(queue_id)["tasks"][0]["id"])


def orders_for(client: StackClient, reference: str) -> list[Any]:
    response = client.sandbox.get("/providers/_admin/orders", params={"reference": reference})
    return list(response.json()["orders"])


def metric_sum(client: StackClient, sample: str) -> float:
    import httpx

    total = 0.0
    for metrics_url in client.stack.metrics_urls():
        for line in httpx.get(metrics_url, timeout=5).text.splitlines():
            if line.startswith(sample + " "):
                total += float(line.split()[-1])
    return total


def start_times(url: str, provider: str) -> list[float]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM e.occurred_at) FROM order_task_events e"
            " JOIN order_tasks t ON t.id = e.task_id"
            " WHERE t.provider = %s AND e.event_type = 'start' ORDER BY 1",
            (provider,),
        ).fetchall()
    return [float(r[0]) for r in rows]


def max_in_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def seconds_between(first: dict[str, Any], second: dict[str, Any]) -> float:
    from datetime import datetime

    begin = datetime.fromisoformat(first["occurred_at"])
    end = datetime.fromisoformat(second["occurred_at"])
    return (end - begin).total_seconds()


def test_a_circuit_override_needs_an_admin_and_a_valid_body(client: StackClient) -> None:
    path = "/ops/v1/providers/steady/circuit"
    body = {"state": "open", "reason": "r"}
    assert client.api.post(path, json=body).status_code == 401  # cascade-core's token
    assert client.ops.post(path, json=body).status_code == 403  # ana resolves, no admin
    for bad in ({**body, "state": "ajar"}, {"state": "open", "operator": "ana"}):
        answer = client.admin.post(path, json=bad)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "invalid_request"
    listed = client.person("vic").get("/ops/v1/providers").json()["providers"]  # a viewer
    steady = next(p for p in listed if p["provider"] == "steady")
    assert (steady["state"], steady["forced"]) == ("closed", None)  # nothing changed
    narrow = next(p for p in listed if p["provider"] == "narrow")
    assert narrow["limits"] == {"max_in_flight": 2, "burst": 1}
