"""A failover that lost commits: the ledger and the provider remember a withdrawal
that the service's database has forgotten, and cascade-core submits it again.

The service runs on database A, the sandbox (ledger, providers, cascade-core) on
its own database. A withdrawal gets as far as money frozen and an order placed;
then the service is stopped and started again on a new, empty database B against
the same sandbox: what a failover to a standby that had none of those commits
looks like. Reconciliation on B names the orphan hold by its order id, and the
resubmitted withdrawal must meet its own hold and its own order again (ids
derived from the order id, workflows/identity.py), never make new ones.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.migrations import migrate
from sandbox.client import StackClient
from sandbox.servers import NatsServer
from sandbox.stack import ROOT, ProviderSpec, Stack, wait_until
from tests.conftest import FAST_TIMING, fresh_database
from workflows.core import Command, Event, FollowUp, RunActivity
from workflows.withdrawal_definition import WITHDRAWAL, WITHDRAWAL_V2, WithdrawalDefinition
from workflows.withdrawal_events import Funds, FundsInsufficient, TaskState, TaskStatus

UNKNOWN = "hold unknown to payment-service"


@contextlib.contextmanager
def stack_with_standby(
    workdir: Path, nats_url: str, specs: list[ProviderSpec]
) -> Iterator[tuple[Stack, str]]:
    """A stack on database A, with the sandbox on a database of its own, and the
    migrated, empty database B that `fail_over` moves the service to."""
    with (
        fresh_database("_lost_ledger") as ledger_url,
        fresh_database("_lost_a") as url_a,
        fresh_database("_lost_b") as url_b,
    ):
        migrate(url_a)
        migrate(url_b)
        stack = Stack(
            url_a, workdir, specs, nats_url=nats_url, workers=1, ledger_database_url=ledger_url
        )
        stack.start()
        try:
            yield stack, url_b
        finally:
            stack.stop()


def fail_over(stack: Stack, url_b: str) -> None:
    """The API and worker stop; new ones start on B, on the same port, so the
    sandbox's webhooks reach them. The sandbox keeps running, and remembers."""
    stack.stop_services()
    stack.database_url = url_b
    stack.start_services()


def reconcile(stack: Stack) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-m", "service.ops", "--json", "reconcile"],
        cwd=ROOT,
        env=stack.env(),  # the service's current database
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout or "[]")


def holds_of(client: StackClient, order_id: str) -> list[dict[str, Any]]:
    holds = client.sandbox.get("/ledger/v1/holds").json()["holds"]
    return [h for h in holds if h["order_id"] == order_id]


def outcomes_of(client: StackClient, order_id: str) -> list[dict[str, Any]]:
    """What cascade-core was told about the order, one row per withdrawal id."""
    rows = client.sandbox.get("/core/_admin/outcomes").json()["outcomes"]
    return [r for r in rows if r["body"]["order_id"] == order_id]


def specs(alpha: str, beta: str) -> list[ProviderSpec]:
    return [
        ProviderSpec("alpha", behaviour=alpha, timing=FAST_TIMING),
        ProviderSpec("beta", behaviour=beta, timing=FAST_TIMING),
    ]


def test_resubmission_after_a_lost_commit_replays_the_hold_and_the_order(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Money frozen and an order open at alpha when the commits are lost."""
    with stack_with_standby(tmp_path, nats_server.url, specs("never_answers", "instant")) as (
        stack,
        url_b,
    ):
        client = StackClient(stack)
        order_id = f"lost-{uuid.uuid4().hex[:12]}"
        first = client.submit(["alpha", "beta"], order_id=order_id)
        assert first.status_code == 201, first.text
        queue_id = first.json()["id"]
        client.wait_task_status(queue_id, 0, "EXECUTING")  # frozen, and alpha took the order
        task_id = client.withdrawal(queue_id)["tasks"][0]["id"]
        order = client.provider_orders()[task_id]
        assert (order["provider"], order["status"], order["creates"]) == ("alpha", "pending", 1)

        # The ledger keeps the order id with the hold; a replay that does not send
        # it (an older client) is the same request, and changes nothing.
        hold = client.sandbox.get(f"/ledger/v1/holds/{task_id}").json()
        assert (hold["status"], hold["order_id"]) == ("frozen", order_id)
        replay = client.sandbox.post(
            f"/ledger/v1/holds/{task_id}/freeze",
            json={"provider": "alpha", "currency": "EUR", "amount": "10.00"},
        )
        assert replay.status_code == 200, replay.text
        assert (replay.json()["status"], replay.json()["order_id"]) == ("frozen", order_id)

        fail_over(stack, url_b)
        code, drift = reconcile(stack)
        assert code == 1
        assert [(r["key"], r["order_id"], r["drift"]) for r in drift] == [
            (task_id, order_id, UNKNOWN)
        ]

        again = client.submit(["alpha", "beta"], order_id=order_id)
        assert again.status_code == 201, again.text  # B has never heard of it
        queue_id = again.json()["id"]
        client.wait_task_status(queue_id, 0, "EXECUTING")
        assert client.withdrawal(queue_id)["tasks"][0]["provider_ref"] == order["id"]
        client.send_webhook("alpha", task_id, "succeeded")  # alpha pays, and says so to B
        view = client.wait_final(queue_id)

        assert view["status"] == "COMPLETED"
        assert [(t["id"], t["status"]) for t in view["tasks"]][:1] == [(task_id, "SUCCEEDED")]
        assert view["tasks"][1]["status"] == "CANCELLED"  # beta never started
        held = holds_of(client, order_id)
        assert [(h["key"], h["status"]) for h in held] == [(task_id, "committed")]
        assert client.ledger_ops() == {task_id: ["freeze", "commit"]}  # and no other key
        orders = client.provider_orders()
        assert list(orders) == [task_id]  # one order, at alpha: its create was replayed
        assert (orders[task_id]["id"], orders[task_id]["creates"]) == (order["id"], 2)
        told = wait_until(lambda: outcomes_of(client, order_id), 20, "cascade-core's outcome")
        assert [(o["key"], o["body"]["status"]) for o in told] == [(queue_id, "COMPLETED")]
        assert reconcile(stack) == (0, [])


def test_resubmission_after_a_lost_commit_skips_a_released_hold(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """alpha declined (its hold rolled back) and beta paid, before the commits were lost."""
    with stack_with_standby(tmp_path, nats_server.url, specs("decline", "instant")) as (
        stack,
        url_b,
    ):
        client = StackClient(stack)
        order_id = f"lost-{uuid.uuid4().hex[:12]}"
        first = client.submit(["alpha", "beta"], order_id=order_id)
        assert first.status_code == 201, first.text
        queue_id = first.json()["id"]
        view = client.wait_final(queue_id)
        assert view["status"] == "COMPLETED"
        declined, paid = (t["id"] for t in view["tasks"])
        paid_order = client.provider_orders()[paid]
        wait_until(lambda: outcomes_of(client, order_id), 20, "cascade-core's outcome")
        # From now on alpha would take (and pay) an order: a new create call there
        # would be a payout with no money held, next to beta's.
        client.set_provider("alpha", behaviour="instant")

        fail_over(stack, url_b)
        code, drift = reconcile(stack)
        assert code == 1
        assert sorted((r["key"], r["order_id"], r["drift"]) for r in drift) == sorted(
            [(declined, order_id, UNKNOWN), (paid, order_id, UNKNOWN)]
        )

        again = client.submit(["alpha", "beta"], order_id=order_id)
        assert again.status_code == 201, again.text
        queue_id = again.json()["id"]
        view = client.wait_final(queue_id)

        assert view["status"] == "COMPLETED"
        tasks = [(t["id"], t["status"], t["funds"], t["last_reason"]) for t in view["tasks"]]
        assert tasks[0] == (declined, "SKIPPED", "RELEASED", "hold_released")
        assert tasks[1][:3] == (paid, "SUCCEEDED", "COMMITTED")
        assert client.provider_load("alpha")["creates"] == 1  # the decline, before the loss
        orders = client.provider_orders()
        assert list(orders) == [paid]  # nothing at alpha; beta's order is the same one
        assert (orders[paid]["id"], orders[paid]["creates"]) == (paid_order["id"], 2)
        assert client.ledger_ops() == {
            declined: ["freeze", "rollback"],
            paid: ["freeze", "commit"],
        }
        assert len(holds_of(client, order_id)) == 2
        told = wait_until(
            lambda: [o for o in outcomes_of(client, order_id) if o["deliveries"] == 2],
            20,
            "B's outcome, a replay of A's",
        )
        assert [(o["key"], o["body"]["status"]) for o in outcomes_of(client, order_id)] == [
            (queue_id, "COMPLETED")
        ]
        assert told[0]["body"]["provider_reference"] == paid_order["id"]
        assert reconcile(stack) == (0, [])


# The pure machine: a freeze that froze nothing ----------------------------------------
def drive(
    definition: WithdrawalDefinition, state: TaskState, event: Event
) -> tuple[TaskState, list[Command]]:
    """Apply an event and its follow-ups, as the engine does."""
    state, produced = definition.decide(state, event, datetime(2026, 1, 1, tzinfo=UTC))
    commands: list[Command] = []
    for command in produced:
        if isinstance(command, FollowUp):
            state, nested = drive(definition, state, command.event)
            commands += nested
        else:
            commands.append(command)
    return state, commands


@pytest.mark.parametrize("definition", [WITHDRAWAL, WITHDRAWAL_V2], ids=["v1", "v2"])
@pytest.mark.parametrize(
    ("event", "funds", "reason"),
    [
        (FundsInsufficient(), Funds.NONE, "insufficient_balance"),
        (FundsInsufficient(reason="hold_released"), Funds.RELEASED, "hold_released"),
    ],
    ids=["insufficient", "released"],
)
def test_a_freeze_that_froze_nothing_skips_without_a_call(
    definition: WithdrawalDefinition, event: FundsInsufficient, funds: Funds, reason: str
) -> None:
    """Neither a create call nor a rollback; a released hold is recorded as released,
    as the ledger has it, so reconciliation finds nothing to report."""
    creating = TaskState(TaskStatus.CREATING, provider="alpha")
    state, commands = drive(definition, creating, event)
    assert (state.status, state.funds, state.target, state.last_reason) == (
        TaskStatus.SKIPPED,
        funds,
        None,
        reason,
    )
    assert not [c for c in commands if isinstance(c, RunActivity)]
