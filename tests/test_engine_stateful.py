"""A hypothesis state machine driving the real engine and PostgreSQL.

Withdrawals are submitted through the real submission code; the engine writes
to the real database. Jobs run through the real job body (`run_activity`),
webhooks through the real inbox path (`apply_webhook`), timers come from the
real `timers` table. Only the outside world is a model: an in-memory ledger
with the sandbox's semantics and providers whose answers hypothesis picks.
Under every interleaving of jobs (including duplicates), webhooks, timers,
operator decisions and cancellations, no two tasks of a withdrawal hold money
at once and nothing is committed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from activities.outcomes import AmbiguousOutcome
from activities.provider_adapters import WebhookTranslator
from activities.providers import OrderStatus, ReferenceWebhooks, StatusResult
from activities.withdrawal import status_event
from activities.withdrawal_rows import attempt_of
from engine import timers
from engine.activity import Activity, ActivityContext
from engine.contracts import Origin, QueueFinished
from engine.db import open_pool
from engine.engine import EngineHooks
from engine.journal import Conn
from engine.migrations import migrate
from engine.rows import QueueRow, TaskRow
from engine.steps import Runtime
from service.models import WithdrawalRequest
from service.webhook_inbox import apply_webhook
from service.withdrawals import submit
from tests.conftest import fresh_database
from workflows.core import Event, IllegalTransition
from workflows.registry import DEFINITIONS
from workflows.withdrawal_definition import WITHDRAWAL
from workflows.withdrawal_events import (
    HOLD_RELEASED,
    Cancel,
    FundsCommitted,
    FundsFrozen,
    FundsInsufficient,
    FundsReleased,
    HoldFound,
    KeyVoided,
    ManualResolved,
    OrderAccepted,
    OrderAmbiguous,
    OrderDeclined,
    OrderSubmitting,
    Timing,
)

TIMING = Timing(recheck_base=timedelta(seconds=1), recheck_max_attempts=2)
OUTCOMES = {
    "freeze": ["frozen", "insufficient", "ambiguous"],
    "create_order": ["accepted", "paid", "declined", "ambiguous", "crash"],
    "check_status": ["truth", "unknown"],
    "commit": ["ok", "ambiguous"],
    "release": ["ok", "ambiguous"],
    "void": ["ok", "ambiguous"],
}


class WorkerDied(Exception):
    """The worker running the job was killed; the job will be run again."""


class LedgerRefusal(Exception):
    """A definitive ledger refusal: the job fails for good (a dead letter)."""


@dataclass
class LedgerModel:
    """The sandbox ledger's semantics, in memory, plus the money invariants."""

    holds: dict[str, str] = field(default_factory=dict)  # key -> frozen/committed/released/void
    queue_of: dict[str, str] = field(default_factory=dict)
    commits: dict[str, int] = field(default_factory=dict)  # queue -> commits

    def freeze(self, key: str) -> bool | None:
        """Whether the key was frozen before (a replay); None: released, nothing frozen."""
        state = self.holds.get(key)
        if state in ("void", "released"):
            return None
        if state is None:
            queue = self.queue_of[key]
            held = [
                k
                for k, s in self.holds.items()
                if self.queue_of[k] == queue and s in ("frozen", "committed")
            ]
            assert not held, f"second hold in queue {queue}: {held} then {key}"
            self.holds[key] = "frozen"
            return False
        return True

    def commit(self, key: str) -> None:
        state = self.holds.get(key)
        if state is None:
            raise LedgerRefusal("hold_not_found")
        if state in ("released", "void"):
            raise LedgerRefusal("hold_released")
        if state == "frozen":
            self.holds[key] = "committed"
            queue = self.queue_of[key]
            self.commits[queue] = self.commits.get(queue, 0) + 1

    def rollback(self, key: str) -> None:
        state = self.holds.get(key)
        if state == "committed":
            raise LedgerRefusal("hold_committed")
        self.holds[key] = "void" if state in (None, "void") else "released"


@dataclass
class World:
    """The outside world: the ledger, and providers that tell the truth about their orders."""

    ledger: LedgerModel = field(default_factory=LedgerModel)
    orders: dict[str, str] = field(default_factory=dict)  # task -> pending/succeeded/failed
    outcome: str = "ok"  # what the next side effect answers, picked by hypothesis
    created_despite_error: bool = False

    def paid_out(self, task_id: str) -> bool:
        return self.orders.get(task_id) == "succeeded"

    def activities(self) -> dict[str, Activity]:
        async def freeze(ctx: ActivityContext) -> Event:
            self._maybe_ambiguous()
            if self.outcome == "insufficient":
                return FundsInsufficient()
            replayed = self.ledger.freeze(str(ctx.task["id"]))
            if replayed is None:
                return FundsInsufficient(reason=HOLD_RELEASED)
            return FundsFrozen(replayed=replayed)

        async def create_order(ctx: ActivityContext) -> Event:
            if not attempt_of(ctx.task)["order_submitted"]:
                return OrderSubmitting()
            task_id, ref = str(ctx.task["id"]), f"ord-{ctx.task['id']}"
            if self.outcome == "crash":  # the order left, then the worker died
                self.orders.setdefault(task_id, "pending")
                raise WorkerDied

            if self.outcome in ("accepted", "paid"):
                self.orders.setdefault(
                    task_id, "succeeded" if self.outcome == "paid" else "pending"
                )
                return OrderAccepted(ref, paid=self.orders[task_id] == "succeeded")
            if self.outcome == "declined" and task_id not in self.orders:
                return OrderDeclined("declined")
            if self.created_despite_error:
                self.orders.setdefault(task_id, "pending")
            return OrderAmbiguous("http_503")

        async def check_status(ctx: ActivityContext) -> Event:
            task_id = str(ctx.task["id"])
            if self.outcome == "unknown":
                result = StatusResult(OrderStatus.UNKNOWN, reason="http_503")
            elif task_id not in self.orders:
                result = StatusResult(OrderStatus.NOT_FOUND)
            else:
                result = StatusResult(OrderStatus(self.orders[task_id]), f"ord-{task_id}")
            return status_event(result, attempt_of(ctx.task)["provider"])

        async def commit(ctx: ActivityContext) -> Event:
            self._maybe_ambiguous()
            self.ledger.commit(str(ctx.task["id"]))
            return FundsCommitted()

        async def release(ctx: ActivityContext) -> Event:
            self._maybe_ambiguous()
            self.ledger.rollback(str(ctx.task["id"]))
            return FundsReleased()

        async def void(ctx: ActivityContext) -> Event:
            self._maybe_ambiguous()
            key = str(ctx.task["id"])
            if self.ledger.holds.get(key) in ("frozen", "committed"):
                return HoldFound(self.ledger.holds[key])
            self.ledger.rollback(key)
            return KeyVoided()

        return {
            "freeze": Activity(freeze),
            "create_order": Activity(create_order),
            "check_status": Activity(check_status),
            "commit": Activity(commit, guarded=False),
            "release": Activity(release, guarded=False),
            "void": Activity(void),
        }

    def _maybe_ambiguous(self) -> None:
        if self.outcome == "ambiguous":
            raise AmbiguousOutcome("http_503")


@dataclass
class RecordingScheduler:
    """Activity jobs are kept to be run (and re-run) by the rules; timers are real rows."""

    jobs: list[tuple[str, str, int]] = field(default_factory=list)

    async def defer_activity(
        self,
        conn: Conn,
        task_id: str,
        activity: str,
        token: int,
        rows: tuple[TaskRow, QueueRow] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.jobs.append((task_id, activity, token))

    def token_written(self, task_id: str, token: int | None) -> None:
        pass  # every activity here is a job: a superseded one finds its token stale

    async def defer_timer(self, conn: Conn, task_id: str, kind: str, due_at: datetime) -> None:
        await timers.schedule(conn, task_id, kind, due_at)

    async def defer_notification(self, conn: Conn, queue_id: str, delay_s: float = 0.0) -> None:
        pass  # cascade-core's callback is not part of this model


LOOP = asyncio.new_event_loop()


def run(coro: Any) -> Any:
    return LOOP.run_until_complete(coro)


@pytest.fixture(scope="module")
def engine_url() -> Iterator[str]:
    """Its own database: the model ledger is not the sandbox's, so keep them apart."""
    with fresh_database("_engine") as url:
        migrate(url)
        yield url


def build_machine(url: str) -> type[RuleBasedStateMachine]:
    class CascadeMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.world = World()
            self.scheduler = RecordingScheduler()
            self.pool = run(open_pool(url, max_size=2))
            hooks = EngineHooks(context_for=lambda _row: TIMING)
            self.runtime = Runtime(
                DEFINITIONS,
                self.pool,
                self.world.activities(),
                hooks=hooks,
                scheduler=self.scheduler,
            )
            self.engine = self.runtime.engine
            # Every provider here (p0, p1, ..., the intruder) speaks the reference shape.
            self.translate_webhook = WebhookTranslator({}, fallback=ReferenceWebhooks())
            self.done: list[tuple[str, str, int]] = []
            self.queues: list[str] = []
            self.tasks: list[str] = []

        def teardown(self) -> None:
            run(self.pool.close())

        async def _query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
            async with self.pool.connection() as conn:
                rows: list[dict[str, Any]] = await (await conn.execute(sql, args)).fetchall()
                return rows

        @initialize()
        def first_withdrawal(self) -> None:
            self.submit_withdrawal(3)

        @precondition(lambda self: len(self.queues) < 2)
        @rule(size=st.integers(1, 3))
        def submit_withdrawal(self, size: int) -> None:
            request = WithdrawalRequest(
                order_id=f"hyp-{uuid.uuid4().hex[:12]}",
                merchant_id="m",
                amount="10.00",
                currency="EUR",
                cascade=[f"p{i}" for i in range(size)],
            )

            async def go() -> None:
                async with self.pool.connection() as conn:
                    queue_id, _ = await submit(conn, self.engine, request, None)
                self.queues.append(queue_id)
                for row in await self._query(
                    "SELECT id::text FROM order_tasks WHERE queue_id = %s ORDER BY position",
                    queue_id,
                ):
                    self.tasks.append(row["id"])
                    self.world.ledger.queue_of[row["id"]] = queue_id

            run(go())

        @precondition(lambda self: self.scheduler.jobs)
        @rule(data=st.data())
        def run_job(self, data: st.DataObject) -> None:
            index = data.draw(st.integers(0, len(self.scheduler.jobs) - 1))
            job = self.scheduler.jobs[index]
            self.world.outcome = data.draw(st.sampled_from(OUTCOMES[job[1]]))
            self.world.created_despite_error = data.draw(st.booleans())
            try:
                run(self.runtime.run_activity(*job))
            except (AmbiguousOutcome, WorkerDied):
                return  # stays queued: the job is retried (or recovered from a dead worker)
            except LedgerRefusal:
                pass  # a final failure: the job would be a dead letter
            self.scheduler.jobs.pop(index)
            self.done.append(job)

        @precondition(lambda self: self.done)
        @rule(data=st.data())
        def rerun_finished_job(self, data: st.DataObject) -> None:
            """A duplicate delivery of a job that already ran."""
            job = data.draw(st.sampled_from(self.done))
            self.world.outcome = data.draw(st.sampled_from(OUTCOMES[job[1]]))
            with contextlib.suppress(AmbiguousOutcome, LedgerRefusal, WorkerDied):
                run(self.runtime.run_activity(*job))

        @precondition(lambda self: self.tasks)
        @rule(data=st.data(), stale=st.booleans())
        def fire_timer(self, data: st.DataObject, stale: bool) -> None:
            rows = run(
                self._query(
                    "SELECT id, task_id::text, kind, due_at FROM timers"
                    " WHERE task_id = ANY(%s::uuid[]) ORDER BY id",
                    self.tasks,
                )
            )
            if not rows:
                return
            row = data.draw(st.sampled_from(rows))
            run(self._query("DELETE FROM timers WHERE id = %s RETURNING id", row["id"]))
            due = row["due_at"] - timedelta(seconds=1) if stale else row["due_at"]
            event = WITHDRAWAL.timer_event(row["kind"], due)

            async def go() -> None:
                async with self.pool.connection() as conn:
                    await self.engine.apply(conn, row["task_id"], event)

            run(go())

        @precondition(lambda self: any(f == "pending" for f in self.world.orders.values()))
        @rule(data=st.data(), fate=st.sampled_from(["succeeded", "failed"]))
        def provider_settles(self, data: st.DataObject, fate: str) -> None:
            pending = [t for t, f in self.world.orders.items() if f == "pending"]
            self.world.orders[data.draw(st.sampled_from(pending))] = fate

        @precondition(lambda self: self.world.orders)
        @rule(data=st.data(), stale=st.booleans(), repeat=st.booleans(), forged=st.booleans())
        def webhook(self, data: st.DataObject, stale: bool, repeat: bool, forged: bool) -> None:
            """The provider reports an order's state; maybe an old 'pending', maybe twice.
            Or another provider, with a valid signature of its own, lies about it."""
            task_id = data.draw(st.sampled_from(list(self.world.orders)))
            status = "pending" if stale else self.world.orders[task_id]
            if forged:
                status = data.draw(st.sampled_from(["succeeded", "failed"]))
            body = {
                "type": "order.updated",
                "data": {"id": f"ord-{task_id}", "reference": task_id, "status": status},
            }
            rows = run(
                self._query(
                    "INSERT INTO webhook_inbox (provider, webhook_id, reference, body)"
                    " SELECT CASE WHEN %s THEN 'intruder' ELSE provider END, %s, %s, %s::jsonb"
                    " FROM order_tasks WHERE id = %s RETURNING id",
                    forged,
                    uuid.uuid4().hex,
                    task_id,
                    json.dumps(body),
                    task_id,
                )
            )
            outcomes = [
                run(apply_webhook(self.runtime, self.translate_webhook, rows[0]["id"]))
                for _ in range(2 if repeat else 1)
            ]
            if forged:
                assert outcomes[0] == "wrong_provider", outcomes

        @precondition(lambda self: self.tasks)
        @rule(data=st.data())
        def operator_resolves(self, data: st.DataObject) -> None:
            """Support checks with the provider, so it decides only on a settled order."""
            task_id = data.draw(st.sampled_from(self.tasks))
            fate = self.world.orders.get(task_id, "failed")
            if fate != "pending":
                self._apply(task_id, ManualResolved(fate == "succeeded", "ana", "checked"))

        @precondition(lambda self: self.tasks)
        @rule(data=st.data())
        def cancel_task(self, data: st.DataObject) -> None:
            self._apply(data.draw(st.sampled_from(self.tasks)), Cancel("ana", "test"))

        @precondition(lambda self: self.queues)
        @rule(data=st.data())
        def cancel_withdrawal(self, data: st.DataObject) -> None:
            queue_id = data.draw(st.sampled_from(self.queues))

            async def go() -> None:
                async with self.pool.connection() as conn:
                    with contextlib.suppress(QueueFinished):
                        await self.engine.cancel_queue(conn, queue_id, Origin("ana"), "test")

            run(go())

        def _apply(self, task_id: str, event: Event) -> None:
            async def go() -> None:
                async with self.pool.connection() as conn:
                    before = await self._task(conn, task_id)
                    try:
                        await self.engine.apply(conn, task_id, event)
                    except IllegalTransition:
                        assert await self._task(conn, task_id) == before  # nothing changed

            run(go())

        @staticmethod
        async def _task(conn: Conn, task_id: str) -> dict[str, Any] | None:
            return await (
                await conn.execute("SELECT * FROM order_tasks WHERE id = %s", (task_id,))
            ).fetchone()

        @invariant()
        def money_is_safe(self) -> None:
            if not self.queues:
                return
            ledger = self.world.ledger
            assert all(n <= 1 for n in ledger.commits.values()), ledger.commits
            rows = run(
                self._query(
                    "SELECT t.id::text, t.queue_id::text, t.status::text, t.funds::text,"
                    " q.status::text AS queue_status FROM order_tasks t"
                    " JOIN order_queues q ON q.id = t.queue_id WHERE t.queue_id = ANY(%s::uuid[])",
                    self.queues,
                )
            )
            for queue_id in self.queues:
                paid = [
                    t
                    for t in self.world.orders
                    if ledger.queue_of[t] == queue_id and self.world.paid_out(t)
                ]
                assert len(paid) <= 1, f"two providers paid out for {queue_id}: {paid}"
            for row in rows:
                hold = ledger.holds.get(row["id"])
                if self.world.paid_out(row["id"]):
                    assert hold in ("frozen", "committed"), ("paid out but released", row, hold)
                if row["status"] == "SUCCEEDED":
                    assert hold == "committed", row
                if row["status"] in ("FAILED", "SKIPPED", "CANCELLED"):
                    assert hold in (None, "released", "void"), (row, hold)
                if row["funds"] == "FROZEN":
                    assert hold == "frozen", (row, hold)
            for queue_id in self.queues:
                mine = [r for r in rows if r["queue_id"] == queue_id]
                successes = sum(r["status"] == "SUCCEEDED" for r in mine)
                assert successes <= 1
                if mine and mine[0]["queue_status"] == "COMPLETED":
                    assert successes == 1

    return CascadeMachine


def test_engine_keeps_money_safe_under_any_interleaving(engine_url: str) -> None:
    machine = build_machine(engine_url)
    machine.TestCase.settings = settings(
        derandomize=True,
        max_examples=100,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine.TestCase().runTest()


def test_cancel_after_the_order_left_never_releases(engine_url: str) -> None:
    """The narrow path, spelled out: the create call left, the worker died, a cancel
    came, then the provider paid. The hold must still be there to commit."""
    machine: Any = build_machine(engine_url)()
    try:
        machine.first_withdrawal()
        task_id = machine.tasks[0]
        for outcome in ("frozen", "crash"):  # frozen notes order_submitting with it
            job = machine.scheduler.jobs[0]
            machine.world.outcome = outcome
            with contextlib.suppress(WorkerDied):
                run(machine.runtime.run_activity(*job))
            if outcome != "crash":
                machine.scheduler.jobs.pop(0)
        machine._apply(task_id, Cancel("ana", "user asked"))
        while machine.scheduler.jobs:  # the crashed job comes back, and anything else
            machine.world.outcome = "ok"
            job = machine.scheduler.jobs.pop(0)
            with contextlib.suppress(WorkerDied, LedgerRefusal):
                run(machine.runtime.run_activity(*job))
        machine.world.orders[task_id] = "succeeded"
        machine.money_is_safe()
    finally:
        machine.teardown()
