"""Version 4 of the withdrawal machine, pure: a provider skipped for health is
deferred to the end of the cascade, not dropped, and a withdrawal past its wait
bound tries what is left (workflows/withdrawal_deferral.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workflows.core import (
    Admit,
    IllegalTransition,
    Limited,
    QueueDecision,
    Reconsider,
    Routing,
    RunActivity,
    TaskView,
    Unhealthy,
)
from workflows.routing import ALL_UNHEALTHY, UNHEALTHY
from workflows.withdrawal_deferral import DEFERRED, LOOK
from workflows.withdrawal_definition import WITHDRAWAL_V3, WITHDRAWAL_V4
from workflows.withdrawal_events import (
    Defer,
    HoldFound,
    NoHold,
    Skip,
    Start,
    TaskState,
    TaskStatus,
)
from workflows.withdrawal_timelines import LOST_TIMELINE

S = TaskStatus
NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
LATER = NOW + timedelta(seconds=30)
PENDING = TaskState(status=S.PENDING)
decide = WITHDRAWAL_V4.decide
rule = WITHDRAWAL_V4.queue_decide


def view(position: int, status: str = "PENDING", **flags: bool) -> TaskView:
    return TaskView(f"t{position}", position, status, **flags)


def routing(now: datetime = NOW, bound: datetime = LATER, **verdicts: object) -> Routing:
    return Routing(verdicts, now, bound)  # type: ignore[arg-type]


def test_a_deferral_asks_the_ledger_and_leaves_the_key_usable() -> None:
    looking, commands = decide(PENDING, Defer(DEFERRED), NOW)
    assert (looking.status, looking.target, looking.last_reason) == (S.PENDING, S.PENDING, DEFERRED)
    assert commands == [RunActivity(LOOK)]
    assert decide(looking, Defer(DEFERRED), NOW) == (looking, [])  # asked once
    assert decide(looking, Start(), NOW) == (looking, [])  # never started meanwhile
    passed, commands = decide(looking, NoHold(), NOW)
    assert (passed.status, passed.target, passed.last_reason) == (S.PENDING, None, DEFERRED)
    assert commands == [Reconsider()]
    assert decide(passed, Defer(DEFERRED), NOW) == (passed, [])  # passed over once
    started, _ = decide(passed, Start(), NOW)
    assert started.status == S.CREATING  # tried later, with the same key


def test_a_hold_found_when_deferring_resumes_the_task_as_version_3_does() -> None:
    looking, _ = decide(PENDING, Defer(DEFERRED), NOW)
    resumed, commands = decide(looking, HoldFound("frozen"), NOW)
    assert (resumed.target, resumed.order_submitted, resumed.last_reason) == (
        None,
        True,
        LOST_TIMELINE,
    )
    assert commands == [Reconsider()]


def test_an_answer_nobody_asked_for_is_illegal() -> None:
    with pytest.raises(IllegalTransition):
        decide(PENDING, NoHold(), NOW)
    with pytest.raises(IllegalTransition):
        WITHDRAWAL_V3.decide(PENDING, Defer(DEFERRED), NOW)  # version 3 never defers


def test_an_unhealthy_task_is_deferred_first_then_the_next_one_starts() -> None:
    tasks = [view(0), view(1), view(2)]
    verdicts = routing(t0=Unhealthy(LATER), t1=Admit())
    assert rule("ACTIVE", False, tasks, verdicts) == QueueDecision(None, skip=(("t0", DEFERRED),))
    looked = [view(0, passed_over=True), view(1), view(2)]
    assert WITHDRAWAL_V4.try_order(looked) == ["t1", "t2", "t0"]
    assert rule("ACTIVE", False, looked, verdicts) == QueueDecision(None, start=("t1",))
    # version 3 drops it for good
    assert WITHDRAWAL_V3.queue_decide("ACTIVE", False, tasks, verdicts).skip == (("t0", UNHEALTHY),)


def test_a_deferred_task_comes_after_every_healthier_one_and_is_tried_at_the_end() -> None:
    # t0 passed over while t1 ran: its order is now after t2, whatever its mark says
    tasks = [view(0), view(1, "SKIPPED"), view(2)]
    assert WITHDRAWAL_V4.try_order(tasks) == ["t2", "t0"]
    assert rule("ACTIVE", False, tasks) == QueueDecision(None, start=("t2",))
    declined = [view(0), view(1, "SKIPPED"), view(2, "FAILED")]
    assert rule("ACTIVE", False, declined, routing(t0=Admit(probe=True))).start == ("t0",)


def test_every_task_unhealthy_waits_for_a_probe_then_past_the_bound_tries_it() -> None:
    tasks = [view(0), view(1, "FAILED")]
    soon = NOW + timedelta(seconds=5)
    waiting = rule("ACTIVE", False, tasks, routing(t0=Unhealthy(soon)))
    assert waiting.hold is not None
    assert (waiting.hold.task_id, waiting.hold.until, waiting.hold.reason) == (
        "t0",
        soon,
        ALL_UNHEALTHY,
    )
    past = routing(now=LATER, bound=LATER, t0=Unhealthy(LATER + timedelta(hours=1)))
    assert rule("ACTIVE", False, tasks, past) == QueueDecision(None, start=("t0",))
    # version 3 gives up untried
    assert WITHDRAWAL_V3.queue_decide("ACTIVE", False, tasks, past).skip == (("t0", UNHEALTHY),)


def test_a_circuit_a_person_forced_open_is_never_tried_past_the_bound() -> None:
    tasks = [view(0), view(1)]
    never = datetime.max.replace(tzinfo=UTC)
    past = routing(LATER, LATER, t0=Unhealthy(never, forced=True), t1=Unhealthy(LATER))
    assert rule("ACTIVE", False, tasks, past) == QueueDecision(None, skip=(("t0", DEFERRED),))
    looked = [view(0, passed_over=True), view(1)]
    assert rule("ACTIVE", False, looked, past) == QueueDecision(None, start=("t1",))
    only_forced = [view(0), view(1, "FAILED")]
    forced = routing(LATER, LATER, t0=Unhealthy(never, forced=True))
    assert rule("ACTIVE", False, only_forced, forced) == QueueDecision(
        None, skip=(("t0", UNHEALTHY),)
    )


def test_a_limit_on_the_next_provider_holds_it_once_the_unhealthy_one_is_deferred() -> None:
    tasks = [view(0, passed_over=True), view(1)]
    limited = routing(t0=Unhealthy(LATER), t1=Limited(LATER, "rate_limit"))
    decision = rule("ACTIVE", False, tasks, limited)
    assert (decision.start, decision.skip, decision.hold and decision.hold.task_id) == (
        (),
        (),
        "t1",
    )


def test_a_success_asks_the_ledger_about_deferred_tasks_and_stops_the_rest() -> None:
    paid = [view(0), view(1, "SUCCEEDED"), view(2)]
    decision = rule("ACTIVE", False, paid)
    assert decision == QueueDecision(None, stop=("t2",), skip=(("t0", UNHEALTHY),))
    voided = [view(0, "SKIPPED"), view(1, "SUCCEEDED"), view(2, "CANCELLED")]
    assert rule("ACTIVE", False, voided) == QueueDecision("COMPLETED")
    asking = [view(0, settling=True), view(1, "SUCCEEDED")]
    assert rule("ACTIVE", False, asking) == QueueDecision(None)  # the ledger's word first


def test_a_resumed_task_runs_first_even_under_a_cancel_and_is_never_asked_twice() -> None:
    tasks = [view(0, resumed=True), view(1, "FAILED"), view(2)]
    for cancel in (False, True):
        assert rule("ACTIVE", cancel, tasks) == QueueDecision(None, start=("t0",))
    paid = [view(0, resumed=True), view(1, "SUCCEEDED")]
    assert rule("ACTIVE", False, paid) == QueueDecision("COMPLETED", stop=("t0",))


def test_a_cancel_ends_the_cascade_asking_only_about_what_it_passed_over() -> None:
    tasks = [view(0), view(1, "FAILED"), view(2)]
    assert rule("ACTIVE", True, tasks) == QueueDecision(
        None, stop=("t2",), skip=(("t0", UNHEALTHY),)
    )
    assert rule("ACTIVE", True, [view(0, "SKIPPED"), view(1, "FAILED"), view(2, "CANCELLED")]) == (
        QueueDecision("CANCELLED")
    )


def test_nothing_left_fails_the_queue_and_a_live_task_holds_it() -> None:
    assert rule("ACTIVE", False, [view(0, "FAILED")]) == QueueDecision("FAILED")
    assert rule("ACTIVE", False, [view(0, "EXECUTING"), view(1)]) == QueueDecision(None)
    assert rule("COMPLETED", False, [view(0)]) == QueueDecision(None)


def test_version_4_differs_from_version_3_only_by_deferral() -> None:
    v3, v4 = WITHDRAWAL_V3.transitions, WITHDRAWAL_V4.transitions
    assert v4.keys() - v3.keys() == {(S.PENDING, Defer), (S.PENDING, NoHold)}
    assert all(v4[pair] is v3[pair] for pair in v3)
    skipped, _ = decide(PENDING, Skip(UNHEALTHY), NOW)  # an ending still asks, as in v3
    assert skipped.target == S.SKIPPED
