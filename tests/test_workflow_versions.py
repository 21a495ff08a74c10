"""A deploy that changes the state machine: withdrawals started on the current
version finish by it, new ones run the next version (tests/workflow_next.py),
and a version cannot be retired while a withdrawal still runs on it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from devstack.embedded import PROJECT_ROOT
from sandbox.client import StackClient
from sandbox.servers import NatsServer
from sandbox.stack import ProviderSpec, Stack
from tests.conftest import FAST_TIMING, assert_ledger_matches_every_task, own_stack

NEXT = "tests.workflow_next:DEFINITIONS"


@pytest.fixture(scope="module")
def versions_stack(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    specs = [ProviderSpec(name, timing=FAST_TIMING) for name in ("alpha", "beta", "gamma")]
    workdir = tmp_path_factory.mktemp("versions")
    with own_stack("_versions", workdir, specs, nats_server.url) as stack:
        yield stack


def test_each_withdrawal_runs_to_its_end_on_the_version_it_started_on(
    versions_stack: Stack,
) -> None:
    client = StackClient(versions_stack)
    client.set_provider("alpha", behaviour="never_answers")
    client.set_provider("beta", behaviour="decline")
    client.set_provider("gamma", behaviour="instant", webhook_delay_ms=100)
    old = client.submit(["alpha", "beta", "gamma"]).json()["id"]
    client.wait_task_status(old, 0, "EXECUTING")

    deploy(versions_stack, NEXT)
    new = client.submit(["beta", "gamma"]).json()["id"]
    assert client.wait_final(new)["status"] == "COMPLETED"
    alpha = client.withdrawal(old)["tasks"][0]
    client.send_webhook("alpha", alpha["id"], "failed")  # the old one reaches beta now
    assert client.wait_final(old)["status"] == "COMPLETED"

    url = versions_stack.database_url
    assert workflow_version(url, old) == 4
    assert workflow_version(url, new) == 5
    # The one transition that differs: a decline at beta.
    assert [t["status"] for t in client.withdrawal(old)["tasks"]] == [
        "FAILED",
        "SKIPPED",
        "SUCCEEDED",
    ]
    assert [t["status"] for t in client.withdrawal(new)["tasks"]] == ["FAILED", "SUCCEEDED"]
    assert "RECHECKING" not in states_of(client, old, position=1)
    assert "RECHECKING" in states_of(client, new, position=0)
    assert_ledger_matches_every_task(client, url)


def test_a_version_in_use_cannot_be_retired(versions_stack: Stack) -> None:
    client = StackClient(versions_stack)
    client.set_provider("alpha", behaviour="never_answers")
    deploy(versions_stack, "workflows.registry:DEFINITIONS")  # back to this build's
    on_current = client.submit(["alpha"]).json()["id"]
    client.wait_task_status(on_current, 0, "EXECUTING")

    refused = start_worker(versions_stack, "tests.workflow_next:CURRENT_RETIRED")
    assert refused.returncode != 0
    assert "withdrawal v4 (1 in flight)" in refused.stderr, refused.stderr
    assert "workflows/registry.py" in refused.stderr

    client.send_webhook("alpha", client.withdrawal(on_current)["tasks"][0]["id"], "succeeded")
    assert client.wait_final(on_current)["status"] == "COMPLETED"
    assert start_worker(versions_stack, "tests.workflow_next:CURRENT_RETIRED").returncode == 0
    assert_ledger_matches_every_task(client, versions_stack.database_url)


def deploy(stack: Stack, definitions: str) -> None:
    """Every process stopped and started again with these definitions."""
    stack.extra_env["WORKFLOW_DEFINITIONS"] = definitions
    stack.stop_services()
    stack.start_services()


def start_worker(stack: Stack, definitions: str) -> subprocess.CompletedProcess[str]:
    """A worker's start-up checks only (it stops at once when they pass: --check)."""
    env = {**stack.env(), "WORKFLOW_DEFINITIONS": definitions}
    return subprocess.run(
        [sys.executable, "worker.py", "--check"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def workflow_version(url: str, queue_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT workflow_version FROM order_queues WHERE id = %s", (queue_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def states_of(client: StackClient, queue_id: str, position: int) -> list[Any]:
    task_id = client.withdrawal(queue_id)["tasks"][position]["id"]
    return [e["to_state"] for e in client.events(queue_id) if e.get("task_id") == task_id]
