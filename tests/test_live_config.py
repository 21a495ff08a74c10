"""Live configuration (service/live_config.py): a change made through the ops API is
applied by every process within 5 s, without a restart, and audited; a withdrawal
in flight keeps what it started with; an invalid change is refused whole."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from sandbox.client import StackClient
from sandbox.stack import wait_until
from service.rollout import Policy

APPLIED_WITHIN_S = 5.0


def versions_in_force(url: str, document: str) -> int | None:
    text = httpx.get(url, timeout=5).text
    found = re.search(rf'^live_config_version{{document="{document}"}} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else None


def wait_every_process(client: StackClient, document: str, version: int) -> float:
    """Seconds until the API and every worker apply `version` (fails past 5 s)."""
    started = time.monotonic()
    for url in client.stack.metrics_urls():

        def applied(url: str = url) -> bool:
            return (versions_in_force(url, document) or 0) >= version

        wait_until(
            applied,
            APPLIED_WITHIN_S,
            f"{url} to apply {document} version {version}",
            every=0.1,
        )
    return time.monotonic() - started


def config(client: StackClient) -> dict[str, Any]:
    answer = client.person("vic").get("/ops/v1/config")  # a viewer may read it
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


@pytest.fixture
def rollout_restored(client: StackClient) -> Iterator[dict[str, Any]]:
    """The stack's rollout as it was; put back after the test (others share it)."""
    before = config(client)["rollout"]["body"]
    yield before
    answer = client.admin.put(
        "/ops/v1/config/rollout", json={"config": before, "reason": "test over: as before"}
    )
    assert answer.status_code == 200, answer.text


def test_a_rollout_change_reaches_every_process_within_5_s_and_is_audited(
    client: StackClient, rollout_restored: dict[str, Any]
) -> None:
    merchant = "m-live-rollout"
    first = client.submit(["alpha"], merchant_id=merchant).json()
    assert first["policy"] == Policy.CASCADE  # the stack's rollout: health routing off
    changed = {
        **rollout_restored,
        "merchants": {**rollout_restored["merchants"], merchant: "single_shot"},
    }
    answer = client.admin.put(
        "/ops/v1/config/rollout",
        json={"config": changed, "reason": "incident 42: back to the old path"},
    )
    assert answer.status_code == 200, answer.text
    version = answer.json()["version"]
    took = wait_every_process(client, "rollout", version)
    assert took < APPLIED_WITHIN_S
    second = client.submit(["alpha", "beta"], merchant_id=merchant).json()
    assert (second["policy"], len(second["tasks"])) == ("single_shot", 1)
    assert client.withdrawal(first["id"])["policy"] == "cascade"  # decided once, kept

    newest = (
        client.person("vic").get("/ops/v1/config/rollout/history?limit=1").json()["versions"][0]
    )
    assert newest["version"] == version
    assert newest["reason"] == "incident 42: back to the old path"
    assert "ada@" in newest["changed_by"]  # the signed-in person, not a typed name
    assert {"path": f"merchants.{merchant}", "old": None, "new": "single_shot"} in newest["changes"]


def test_a_provider_change_reaches_every_process_and_a_withdrawal_in_flight_keeps_its_settings(
    client: StackClient,
) -> None:
    client.set_provider("alpha", behaviour="never_answers")
    before = client.submit(["alpha"]).json()  # alpha's webhook SLA: 60 s
    client.wait_task_status(before["id"], 0, "EXECUTING")
    alpha = config(client)["providers"]["body"]["alpha"]
    quicker = {k: v for k, v in alpha.items() if k not in ("api_key", "webhook_secrets")}
    quicker["timing"] = {**alpha["timing"], "webhook_sla_s": 0.5}
    try:
        version = _put_provider(client, "alpha", quicker, "alpha answers late: shorter SLA")
        wait_every_process(client, "providers", version)
        after = client.submit(["alpha"]).json()
        client.wait_task_status(after["id"], 0, "MANUAL_CHECK", timeout=15)  # the new SLA
        task = client.withdrawal(before["id"])["tasks"][0]
        assert task["status"] == "EXECUTING"  # still on the 60 s it started with
        deadline = datetime.fromisoformat(task["webhook_deadline"])
        assert (deadline - datetime.fromisoformat(before["created_at"])).total_seconds() > 50
    finally:
        _put_provider(client, "alpha", {**quicker, "timing": alpha["timing"]}, "test over")
    shown = client.person("vic").get("/ops/v1/config/providers/history?limit=2").json()
    change = shown["versions"][1]["changes"]
    assert {"path": "alpha.timing.webhook_sla_s", "old": 60.0, "new": 0.5} in change


def _put_provider(client: StackClient, name: str, settings: dict[str, Any], why: str) -> int:
    answer = client.admin.put(
        f"/ops/v1/config/providers/{name}", json={"settings": settings, "reason": why}
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["version"])


def test_an_invalid_change_is_refused_whole_and_changes_nothing(client: StackClient) -> None:
    before = config(client)
    rollout = {**before["rollout"]["body"], "cascade_percent": 101}
    refused = client.admin.put("/ops/v1/config/rollout", json={"config": rollout, "reason": "x"})
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["field"] == "config.cascade_percent"

    alpha = {k: v for k, v in before["providers"]["body"]["alpha"].items() if k != "api_key"}
    alpha.pop("webhook_secrets")
    bad_timing = {**alpha, "timing": {**alpha["timing"], "webhook_sla_s": -1}}
    for settings, field in [
        (bad_timing, "settings.timing.webhook_sla_s"),
        ({**alpha, "adapter": "nope"}, "settings"),
        ({**alpha, "webhook_secrets": ["not-a-whsec"]}, "settings.webhook_secrets"),
    ]:
        answer = client.admin.put(
            "/ops/v1/config/providers/alpha", json={"settings": settings, "reason": "x"}
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"][0]["field"] == field

    stale = {"config": before["rollout"]["body"], "reason": "x", "expected_version": 0}
    assert client.admin.put("/ops/v1/config/rollout", json=stale).status_code == 409
    viewer = client.person("vic").put("/ops/v1/config/rollout", json=stale)
    assert viewer.status_code == 403
    after = config(client)
    for name in ("rollout", "providers"):
        assert after[name]["version"] == before[name]["version"]


def test_credentials_are_shown_as_fingerprints_only(client: StackClient) -> None:
    shown = client.person("vic").get("/ops/v1/config").text
    for secret in client.stack.secrets.values():
        assert secret not in shown
    assert "sk_test_alpha" not in shown
    assert '"sha256:' in shown


def test_the_history_is_append_only(client: StackClient) -> None:
    with psycopg.connect(client.stack.database_url) as conn, pytest.raises(psycopg.Error):
        conn.execute("UPDATE live_config SET reason = 'rewritten'")
