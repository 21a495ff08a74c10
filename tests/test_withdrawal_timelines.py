"""Version 3 of the withdrawal machine, pure: it asks the ledger before it believes
what a lost commit may have taken with it (workflows/withdrawal_timelines.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from workflows.core import (
    Admit,
    Alert,
    FollowUp,
    QueueDecision,
    Reconsider,
    Routing,
    RunActivity,
    StartTimer,
    TaskView,
    Unhealthy,
)
from workflows.withdrawal_definition import WITHDRAWAL_V2, WITHDRAWAL_V3
from workflows.withdrawal_events import (
    BeginRecheck,
    Cancel,
    Funds,
    FundsFrozen,
    HoldFound,
    KeyVoided,
    ManualResolved,
    OrderSubmitting,
    ProviderPending,
    ProviderSucceeded,
    Skip,
    Start,
    Stop,
    TaskState,
    TaskStatus,
    Timer,
    TimerFired,
    Timing,
)
from workflows.withdrawal_timelines import LOST_TIMELINE, VOID

S = TaskStatus
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
PENDING = TaskState(status=S.PENDING)
CANCEL = Cancel(actor="cascade-core", reason="asked")
REF = "ord_1"
decide = WITHDRAWAL_V3.decide


@pytest.mark.parametrize(
    ("event", "target", "reason"),
    [(Skip("provider_unhealthy"), S.SKIPPED, "provider_unhealthy"), (CANCEL, S.CANCELLED, None)],
)
def test_an_unstarted_task_asks_the_ledger_before_it_ends(
    event: Skip | Cancel, target: TaskStatus, reason: str | None
) -> None:
    asking, commands = decide(PENDING, event, NOW)
    assert (asking.status, asking.target, asking.funds) == (S.PENDING, target, Funds.NONE)
    assert commands == [RunActivity(VOID)]
    assert decide(asking, event, NOW) == (asking, [])  # asked once
    assert decide(asking, Start(), NOW) == (asking, [])  # never started meanwhile
    assert decide(asking, Stop(), NOW) == (asking, [])
    ended, commands = decide(asking, KeyVoided(), NOW)
    assert (ended.status, ended.target, ended.funds, commands) == (target, None, Funds.RELEASED, [])
    if reason:
        assert ended.last_reason == reason


def test_version_2_ends_them_without_asking() -> None:
    skipped, commands = WITHDRAWAL_V2.decide(PENDING, Skip("provider_unhealthy"), NOW)
    assert (skipped.status, commands) == (S.SKIPPED, [])


def test_a_hold_a_lost_timeline_froze_resumes_the_task_as_if_its_order_had_left() -> None:
    asking, _ = decide(PENDING, CANCEL, NOW)
    resumed, commands = decide(asking, HoldFound("frozen"), NOW)
    assert commands == [Reconsider()]  # PENDING stays PENDING: the queue rule starts it
    assert resumed == replace(
        PENDING, order_submitted=True, cancel_requested=True, last_reason=LOST_TIMELINE
    )
    skipping, _ = decide(PENDING, Skip("provider_unhealthy"), NOW)
    resumed, _ = decide(skipping, HoldFound("committed"), NOW)
    assert (resumed.order_submitted, resumed.cancel_requested) == (True, False)
    started, commands = decide(resumed, Start(), NOW)
    assert (started.status, started.order_submitted, commands) == (
        S.CREATING,
        True,
        [RunActivity("freeze")],
    )


def test_a_replayed_freeze_means_the_order_may_have_left() -> None:
    creating = TaskState(status=S.CREATING)
    fresh, commands = decide(creating, FundsFrozen(), NOW)
    assert (fresh.funds, fresh.order_submitted, commands) == (
        Funds.FROZEN,
        False,
        [FollowUp(OrderSubmitting())],  # noted in the same transaction, then sent
    )
    replayed, commands = decide(creating, FundsFrozen(replayed=True), NOW)
    assert (replayed.funds, replayed.order_submitted, commands) == (
        Funds.FROZEN,
        True,
        [RunActivity("create_order")],
    )
    # version 2 takes a replay for a fresh freeze: the create step would ask to submit
    v2, _ = WITHDRAWAL_V2.decide(creating, FundsFrozen(replayed=True), NOW)
    assert not v2.order_submitted


def test_a_cancel_before_the_freeze_answers_waits_for_it() -> None:
    creating = TaskState(status=S.CREATING)
    waiting, commands = decide(creating, CANCEL, NOW)
    assert (waiting.cancel_requested, waiting.target, commands) == (True, None, [])
    released, commands = decide(waiting, FundsFrozen(), NOW)  # fresh: nothing left
    assert (released.target, commands) == (S.CANCELLED, [RunActivity("release")])
    rechecking, commands = decide(waiting, FundsFrozen(replayed=True), NOW)
    assert rechecking.status == S.NEGATIVE_EVAL and rechecking.target is None
    assert [type(c.event) for c in commands if hasattr(c, "event")] == [BeginRecheck]
    # with the freeze answered and fresh, the cancel releases at once, as before
    frozen = TaskState(status=S.CREATING, funds=Funds.FROZEN)
    settled, commands = decide(frozen, CANCEL, NOW)
    assert (settled.target, commands) == (S.CANCELLED, [RunActivity("release")])


def test_a_resumed_task_stopped_by_a_success_elsewhere_is_shown_to_a_person() -> None:
    resumed = replace(PENDING, order_submitted=True, last_reason=LOST_TIMELINE)
    ended, commands = decide(resumed, Stop(), NOW)
    assert ended.status == S.CANCELLED
    assert [type(c) for c in commands] == [Alert]
    plain, commands = decide(PENDING, Stop(), NOW)  # the usual stop: no ledger call
    assert (plain.status, commands) == (S.CANCELLED, [])


def view(i: int, status: str = "PENDING", **flags: bool) -> TaskView:
    return TaskView(f"t{i}", i, status, **flags)


LATER = NOW + timedelta(seconds=30)


def test_the_queue_waits_while_an_unstarted_ending_asks_the_ledger() -> None:
    tasks = [view(0, settling=True), view(1)]
    assert WITHDRAWAL_V3.queue_decide("ACTIVE", False, tasks) == QueueDecision(None)
    assert WITHDRAWAL_V3.queue_decide("ACTIVE", True, tasks) == QueueDecision(None)
    assert WITHDRAWAL_V2.queue_decide("ACTIVE", False, tasks).start == ("t0",)


def test_a_skip_never_starts_the_next_task_in_the_same_breath() -> None:
    routing = Routing({"t0": Unhealthy(LATER), "t1": Admit()}, NOW, LATER)
    tasks = [view(0), view(1)]
    v3 = WITHDRAWAL_V3.queue_decide("ACTIVE", False, tasks, routing)
    assert v3 == QueueDecision(None, skip=(("t0", "provider_unhealthy"),))
    v2 = WITHDRAWAL_V2.queue_decide("ACTIVE", False, tasks, routing)
    assert v2.start == ("t1",)
    # every provider unhealthy past the wait: skipped one by one, failed once all ended
    late = Routing({"t0": Unhealthy(LATER), "t1": Unhealthy(LATER)}, LATER, NOW)
    assert WITHDRAWAL_V3.queue_decide("ACTIVE", False, tasks, late).status is None
    ended = [view(0, "SKIPPED"), view(1, "SKIPPED")]
    assert WITHDRAWAL_V3.queue_decide("ACTIVE", False, ended).status == "FAILED"


def test_a_resumed_task_starts_before_anything_else_whatever_health_or_a_cancel_say() -> None:
    tasks = [view(0, "SKIPPED"), view(1), view(2, resumed=True)]
    unhealthy = Routing({"t1": Admit(), "t2": Unhealthy(LATER)}, NOW, LATER)
    for cancel in (False, True):
        decision = WITHDRAWAL_V3.queue_decide("ACTIVE", cancel, tasks, unhealthy)
        assert decision == QueueDecision(None, start=("t2",))
    live = [view(0, "EXECUTING"), view(1, resumed=True)]
    assert WITHDRAWAL_V3.queue_decide("ACTIVE", True, live) == QueueDecision(None)
    paid = [view(0, "SUCCEEDED"), view(1, resumed=True)]
    assert WITHDRAWAL_V3.queue_decide("ACTIVE", False, paid) == QueueDecision(
        "COMPLETED", stop=("t1",)
    )


def test_a_manual_check_keeps_asking_the_provider_and_settles_on_a_final_answer() -> None:
    """A webhook acknowledged in a lost timeline never comes again: the status is
    asked every `recheck_cap` while a person has the task."""
    timing = Timing(recheck_cap=timedelta(minutes=5))
    executing = TaskState(status=S.EXECUTING, funds=Funds.FROZEN, sla_expired=True, timing=timing)
    manual, commands = decide(executing, ProviderPending(REF, solicited=True), NOW)
    due = NOW + timedelta(minutes=5)
    assert (manual.status, manual.next_check_at) == (S.MANUAL_CHECK, due)
    assert commands == [StartTimer(Timer.STATUS_POLL, due)]
    asking, commands = decide(manual, TimerFired(Timer.STATUS_POLL, due), due)
    assert (asking.next_check_at, commands) == (None, [RunActivity("check_status")])
    again, commands = decide(asking, ProviderPending(REF, solicited=True), due)
    assert commands == [StartTimer(Timer.STATUS_POLL, due + timedelta(minutes=5))]
    assert decide(again, ProviderPending(REF), due) == (again, [])  # a poll is already due
    paid, commands = decide(asking, ProviderSucceeded(REF, solicited=True), due)
    assert (paid.target, commands) == (S.SUCCEEDED, [RunActivity("commit")])
    # a person decided first: the poll that comes due asks nothing
    decided, _ = decide(manual, ManualResolved(False, "ana", "statement"), NOW)
    assert decide(decided, TimerFired(Timer.STATUS_POLL, due), due) == (decided, [])
    # version 2 leaves it to the person alone
    v2, commands = WITHDRAWAL_V2.decide(executing, ProviderPending(REF, solicited=True), NOW)
    assert (v2.status, v2.next_check_at, commands) == (S.MANUAL_CHECK, None, [])
