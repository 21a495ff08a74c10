"""Restoring a cohort moved back, on the stack: the ops API and `service.ops config
restore`, for admins only, audited; every process exports `cohort_moved_back`."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from sandbox.client import StackClient
from sandbox.stack import wait_until
from tests.test_forensics import ops

RESTORE = "/ops/v1/config/rollout/cohorts/{}/restore"


def rollout(client: StackClient) -> dict[str, Any]:
    answer = client.person("vic").get("/ops/v1/config")
    assert answer.status_code == 200, answer.text
    return answer.json()["rollout"]  # type: ignore[no-any-return]


def put_rollout(client: StackClient, body: dict[str, Any], reason: str) -> int:
    answer = client.admin.put("/ops/v1/config/rollout", json={"config": body, "reason": reason})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["version"])


def moved_back_everywhere(client: StackClient, value: int) -> None:
    """Every process (API and workers) exports the cohort as moved back, or not."""
    series = re.compile(r'^cohort_moved_back\{cohort="health_cascade"\} (\S+)$', re.M)
    for url in client.stack.metrics_urls():

        def shows(url: str = url) -> bool:
            found = series.search(httpx.get(url, timeout=5).text)
            return found is not None and float(found.group(1)) == value

        wait_until(shows, 5, f"{url} to export cohort_moved_back {value}", every=0.1)


def test_an_admin_restores_a_cohort_moved_back_by_api_or_command_line(
    client: StackClient,
) -> None:
    before = rollout(client)["body"]
    moved = {**before, "moved_back": {"health_cascade": "single_shot"}}
    try:
        put_rollout(client, moved, "test: as the guard would")
        moved_back_everywhere(client, 1)
        # The routed merchant's cohort is health_cascade: new withdrawals run single-shot.
        view = client.submit(["alpha"], merchant_id="routed").json()
        assert (view["policy"], client.wait_final(view["id"])["status"]) == (
            "single_shot",
            "COMPLETED",
        )
        assert (
            client.ops.post(RESTORE.format("health_cascade"), json={"reason": "x"}).status_code
            == 403
        )
        assert client.admin.post(RESTORE.format("nope"), json={"reason": "x"}).status_code == 404

        done = ops(client, "config", "restore", "health_cascade", "--reason", "fixed", person="ada")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)[0]["name"] == "rollout"
        again = client.admin.post(RESTORE.format("health_cascade"), json={"reason": "again"})
        assert (again.status_code, again.json()["error"]["code"]) == (409, "not_moved_back")

        put_rollout(client, moved, "test: moved back again")
        answer = client.admin.post(RESTORE.format("health_cascade"), json={"reason": "INC-7 over"})
        assert answer.status_code == 200, answer.text
        assert rollout(client)["version"] == answer.json()["version"]
        assert rollout(client)["body"]["moved_back"] == {}
        history = client.admin.get("/ops/v1/config/rollout/history?limit=1").json()
        [newest] = history["versions"]
        assert newest["reason"] == "INC-7 over" and newest["changed_by"].startswith("person:ada")
        moved_back_everywhere(client, 0)
    finally:
        if rollout(client)["body"] != before:
            put_rollout(client, before, "test over: as before")
