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
from workflows.registry import Definitions
from workflows.withdrawal_definition import (
    WITHDRAWAL,
    WITHDRAWAL_V2,
    WITHDRAWAL_V3,
    WithdrawalDefinition,
)
from workflows.withdrawal_events import Funds, FundsInsufficient, TaskState, TaskStatus
from workflows.withdrawal_timelines import LOST_TIMELINE

UNKNOWN = "hold unknown to payment-service"
# This build with new withdrawals pinned to version 2, which believes what a lost
# commit took with it: the proof that the version 3 scenarios below can fail.
V2_CURRENT = Definitions(WITHDRAWAL, WITHDRAWAL_V2, WITHDRAWAL_V3, current={"withdrawal": 2})
ON_V2 = {"WORKFLOW_DEFINITIONS": "tests.test_lost_commit:V2_CURRENT"}


@contextlib.contextmanager
def stack_with_standby(
    workdir: Path, nats_url: str, specs: list[ProviderSpec], extra_env: dict[str, str] | None = None
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
            url_a,
            workdir,
            specs,
            nats_url=nats_url,
            workers=1,
            ledger_database_url=ledger_url,
            extra_env=dict(extra_env or {}),
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
        order_id, task_id, order = order_open_at_alpha(client)

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


# Version 3: what a lost commit took with it is asked of the ledger, not believed ------
def order_open_at_alpha(client: StackClient) -> tuple[str, str, dict[str, Any]]:
    """On A: alpha's task froze the money and alpha took the order, which stays open
    (never_answers). The order id, alpha's task id and its order at alpha."""
    order_id = f"lost-{uuid.uuid4().hex[:12]}"
    first = client.submit(["alpha", "beta"], order_id=order_id)
    assert first.status_code == 201, first.text
    client.wait_task_status(first.json()["id"], 0, "EXECUTING")
    task_id = client.withdrawal(first.json()["id"])["tasks"][0]["id"]
    order = client.provider_orders()[task_id]
    assert (order["provider"], order["status"], order["creates"]) == ("alpha", "pending", 1)
    return order_id, task_id, order


def order_open_at_alpha_then_lost(stack: Stack, url_b: str, client: StackClient) -> tuple[str, str]:
    """order_open_at_alpha, then the failover to the empty B. The order id, alpha's task id."""
    order_id, task_id, _ = order_open_at_alpha(client)
    fail_over(stack, url_b)
    return order_id, task_id


def force_circuit(client: StackClient, provider: str, state: str) -> None:
    """An operator's word on B (circuits are the service's rows: A's went with A)."""
    body = {"state": state, "reason": "provider announced an outage"}
    forced = client.admin.post(f"/ops/v1/providers/{provider}/circuit", json=body)
    assert forced.status_code == 200, forced.text


def resubmit_and_cancel_at_once(client: StackClient, order_id: str) -> str:
    """The cancel lands while the resubmission's (replayed) freeze is unanswered."""
    client.set_ledger_faults(latency_ms=1000)
    queue_id = str(client.submit(["alpha", "beta"], order_id=order_id).json()["id"])
    cancel = client.api.post(f"/v1/withdrawals/{queue_id}/cancel", json={"reason": "user"})
    client.set_ledger_faults()
    assert cancel.status_code == 202, cancel.text
    return queue_id


def audit_of(client: StackClient, queue_id: str, task_id: str) -> list[tuple[str, str, str]]:
    events = [e for e in client.events(queue_id) if e.get("task_id") == task_id]
    return [(e["from_state"], e["to_state"], e["event_type"]) for e in events]


def test_a_health_deferral_after_a_lost_commit_resumes_the_task_the_lost_timeline_started(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """alpha's circuit is open on B when cascade-core resubmits: the deferral (version
    4; version 3's skip did the same) asks the ledger first, finds A's hold, and the
    task runs to its end at alpha (its create replayed) before beta is ever
    considered: one payout."""
    with stack_with_standby(tmp_path, nats_server.url, specs("never_answers", "instant")) as (
        stack,
        url_b,
    ):
        client = StackClient(stack)
        order_id, task_id = order_open_at_alpha_then_lost(stack, url_b, client)
        force_circuit(client, "alpha", "open")

        again = client.submit(["alpha", "beta"], order_id=order_id)
        assert again.status_code == 201, again.text
        queue_id = again.json()["id"]
        client.wait_task_status(queue_id, 0, "EXECUTING")
        alpha, beta = client.withdrawal(queue_id)["tasks"]
        assert alpha["id"] == task_id
        assert (alpha["last_reason"], beta["status"]) == (LOST_TIMELINE, "PENDING")
        audit = audit_of(client, queue_id, task_id)
        assert audit[:3] == [
            ("PENDING", "PENDING", "defer"),  # alpha unhealthy: but first, the ledger
            ("PENDING", "PENDING", "hold_found"),  # A's hold: resumed
            ("PENDING", "CREATING", "start"),  # whatever alpha's circuit says
        ], audit
        orders = client.provider_orders()
        assert list(orders) == [task_id]  # nothing at beta while alpha's order is open
        assert (orders[task_id]["provider"], orders[task_id]["creates"]) == ("alpha", 2)
        assert client.provider_load("beta")["creates"] == 0

        client.send_webhook("alpha", task_id, "succeeded")
        view = client.wait_final(queue_id)
        assert view["status"] == "COMPLETED"
        assert [(t["status"], t["funds"]) for t in view["tasks"]] == [
            ("SUCCEEDED", "COMMITTED"),
            ("CANCELLED", "NONE"),  # stopped by the success: no ledger call
        ]
        assert client.ledger_ops() == {task_id: ["freeze", "commit"]}  # one payout
        assert list(client.provider_orders()) == [task_id]
        assert client.provider_load("beta")["creates"] == 0
        assert reconcile(stack) == (0, [])


def test_version_2_skips_the_task_the_lost_timeline_started_and_pays_twice(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """alpha's circuit is open on B when cascade-core resubmits. Version 2 believes
    what the lost commit took with it ("nothing frozen for alpha's task"): it skips
    alpha without asking the ledger, and beta pays while alpha's order is still open
    (a double payout), under A's hold, frozen for ever."""
    with stack_with_standby(
        tmp_path, nats_server.url, specs("never_answers", "instant"), ON_V2
    ) as (stack, url_b):
        client = StackClient(stack)
        order_id, task_id = order_open_at_alpha_then_lost(stack, url_b, client)
        force_circuit(client, "alpha", "open")

        again = client.submit(["alpha", "beta"], order_id=order_id)
        assert again.status_code == 201, again.text
        view = client.wait_final(again.json()["id"])

        assert view["status"] == "COMPLETED"
        alpha, beta = view["tasks"]
        assert [(t["status"], t["funds"]) for t in (alpha, beta)] == [
            ("SKIPPED", "NONE"),
            ("SUCCEEDED", "COMMITTED"),
        ]
        assert audit_of(client, view["id"], task_id) == [("PENDING", "SKIPPED", "skip")]
        orders = client.provider_orders()
        assert (orders[task_id]["provider"], orders[task_id]["status"]) == ("alpha", "pending")
        assert orders[beta["id"]]["provider"] == "beta"  # the second payout
        assert client.ledger_ops() == {task_id: ["freeze"], beta["id"]: ["freeze", "commit"]}
        code, drift = reconcile(stack)
        assert code == 1
        assert [(r["key"], r["drift"]) for r in drift] == [
            (task_id, "funds NONE but ledger frozen")
        ]


def test_a_cancel_right_after_a_resubmission_never_releases_the_lost_timelines_hold(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The cancel lands while the replayed freeze is unanswered: the task waits for the
    answer, which says "replayed", so it re-checks alpha's order rather than release
    the hold under it. The hold is released once alpha says the order failed; beta's
    task, never started, leaves its key voided at the ledger."""
    with stack_with_standby(tmp_path, nats_server.url, specs("never_answers", "instant")) as (
        stack,
        url_b,
    ):
        client = StackClient(stack)
        order_id, task_id = order_open_at_alpha_then_lost(stack, url_b, client)
        queue_id = resubmit_and_cancel_at_once(client, order_id)

        def following() -> dict[str, Any] | None:
            view = client.withdrawal(queue_id)
            first = view["tasks"][0]
            return view if first["status"] == "EXECUTING" and first["provider_ref"] else None

        view = wait_until(following, 20, "alpha's task to re-check and follow its order")
        alpha, beta = view["tasks"]
        assert view["status"] == "ACTIVE"  # alpha's order may still pay out
        assert alpha["id"] == task_id
        assert (alpha["cancel_requested"], alpha["funds"], alpha["last_reason"]) == (
            True,
            "FROZEN",
            "cancelled_after_a_lost_commit",
        )
        audit = audit_of(client, queue_id, task_id)
        assert audit[:4] == [
            ("PENDING", "CREATING", "start"),
            ("CREATING", "CREATING", "cancel"),  # the freeze unanswered: wait for it
            ("CREATING", "NEGATIVE_EVAL", "funds_frozen"),  # replayed: the order may exist
            ("NEGATIVE_EVAL", "RECHECKING", "begin_recheck"),
        ], audit
        assert audit[-1][:2] == ("RECHECKING", "EXECUTING"), audit  # alpha: still pending
        (hold,) = holds_of(client, order_id)
        assert (hold["key"], hold["status"]) == (task_id, "frozen")  # not released
        assert client.ledger_ops()[task_id] == ["freeze"]  # A's freeze, nothing since
        assert client.provider_orders()[task_id]["creates"] == 1  # looked at, not resent

        client.send_webhook("alpha", task_id, "failed")
        final = client.wait_final(queue_id)

        assert final["status"] == "CANCELLED"
        assert [(t["status"], t["funds"]) for t in final["tasks"]] == [
            ("FAILED", "RELEASED"),
            ("CANCELLED", "RELEASED"),
        ]
        ops = client.ledger_ops()
        assert ops == {task_id: ["freeze", "rollback"], beta["id"]: ["void"]}
        assert list(client.provider_orders()) == [task_id]  # beta never tried
        assert client.provider_load("beta")["creates"] == 0
        assert reconcile(stack) == (0, [])


def test_version_2_releases_the_lost_timelines_hold_under_an_open_order(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The same cancel on version 2: the hold is released at once, while alpha's
    order is open and can still pay (money paid out with nothing held for it); the
    ledger and the service agree, so reconciliation sees nothing."""
    with stack_with_standby(
        tmp_path, nats_server.url, specs("never_answers", "instant"), ON_V2
    ) as (stack, url_b):
        client = StackClient(stack)
        order_id, task_id = order_open_at_alpha_then_lost(stack, url_b, client)
        queue_id = resubmit_and_cancel_at_once(client, order_id)
        final = client.wait_final(queue_id)

        assert final["status"] == "CANCELLED"
        assert (final["tasks"][0]["status"], final["tasks"][0]["funds"]) == (
            "CANCELLED",
            "RELEASED",
        )
        assert audit_of(client, queue_id, task_id) == [
            ("PENDING", "CREATING", "start"),
            ("CREATING", "CREATING", "cancel"),
            ("CREATING", "CANCELLED", "funds_released"),
        ]
        (hold,) = holds_of(client, order_id)
        assert hold["status"] == "released"
        assert client.ledger_ops()[task_id] == ["freeze", "rollback"]
        assert client.provider_orders()[task_id]["status"] == "pending"  # can still pay
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
