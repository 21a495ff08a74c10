"""The pure parts of routing: the routed queue rule, the circuit, version 2's rows,
and reading Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from activities.http import retry_after_s
from workflows.core import (
    Admit,
    FollowUp,
    Hold,
    Limited,
    QueueDecision,
    Reconsider,
    Routing,
    RunActivity,
    StartTimer,
    TaskView,
    Unhealthy,
)
from workflows.health import Circuit, HealthRules, Tally, next_circuit, take_probe
from workflows.routing import route
from workflows.withdrawal_definition import WITHDRAWAL, WITHDRAWAL_V2
from workflows.withdrawal_events import (
    BeginRecheck,
    Funds,
    OrderThrottled,
    Skip,
    TaskState,
    TaskStatus,
    Timer,
    TimerFired,
    Wait,
)

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
LATER = NOW + timedelta(seconds=30)
A, B, C = (TaskView(f"t{i}", i, "PENDING") for i in range(3))


def routing(**verdicts: object) -> Routing:
    return Routing(verdicts, NOW, LATER)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ({"t0": Admit()}, QueueDecision(None, start=("t0",))),
        (
            {"t0": Unhealthy(LATER), "t1": Admit()},
            QueueDecision(None, start=("t1",), skip=(("t0", "provider_unhealthy"),)),
        ),
        (
            {"t0": Unhealthy(LATER), "t1": Limited(NOW, "rate_limit")},
            QueueDecision(
                None, skip=(("t0", "provider_unhealthy"),), hold=Hold("t1", NOW, "rate_limit")
            ),
        ),
        (
            {"t0": Limited(LATER, "concurrency_limit")},
            QueueDecision(None, hold=Hold("t0", LATER, "concurrency_limit")),
        ),
    ],
)
def test_route_starts_the_cheapest_admitted_and_skips_the_unhealthy_before_it(
    verdicts: dict[str, object], expected: QueueDecision
) -> None:
    assert route([A, B, C], routing(**verdicts), "FAILED") == expected


def test_every_provider_unhealthy_waits_for_the_first_probe_within_the_bound() -> None:
    soon, late = NOW + timedelta(seconds=5), NOW + timedelta(seconds=50)
    decision = route([A, B], routing(t0=Unhealthy(late), t1=Unhealthy(soon)), "FAILED")
    assert decision == QueueDecision(None, hold=Hold("t0", soon, "all_providers_unhealthy"))
    capped = route([A], routing(t0=Unhealthy(late)), "FAILED")
    assert capped.hold == Hold("t0", LATER, "all_providers_unhealthy")  # never past the bound


def test_every_provider_unhealthy_past_the_bound_fails_the_withdrawal() -> None:
    over = Routing({"t0": Unhealthy(LATER), "t1": Unhealthy(LATER)}, LATER, LATER)
    assert route([A, B], over, "FAILED") == QueueDecision(
        "FAILED", skip=(("t0", "provider_unhealthy"), ("t1", "provider_unhealthy"))
    )


def test_only_version_2_routes_and_a_live_task_still_blocks_every_start() -> None:
    tasks = [TaskView("t0", 0, "PENDING"), TaskView("t1", 1, "PENDING")]
    unhealthy = routing(t0=Unhealthy(LATER), t1=Admit())
    assert WITHDRAWAL.queue_decide("ACTIVE", False, tasks, unhealthy).start == ("t0",)
    assert WITHDRAWAL_V2.queue_decide("ACTIVE", False, tasks, unhealthy).start == ("t1",)
    live = [TaskView("t0", 0, "EXECUTING"), TaskView("t1", 1, "PENDING")]
    assert WITHDRAWAL_V2.queue_decide("ACTIVE", False, live, unhealthy) == QueueDecision(None)


RULES = HealthRules(window_s=60, min_calls=4, max_failure_ratio=0.5, open_s=30, probes=2)
CLOSED = Circuit("closed", NOW - timedelta(hours=1))


def test_a_circuit_opens_past_the_ratio_with_enough_calls() -> None:
    assert next_circuit(CLOSED, Tally({"ambiguous": 3}), RULES, NOW) is CLOSED  # too few
    assert next_circuit(CLOSED, Tally({"ambiguous": 1, "accepted": 3}), RULES, NOW) is CLOSED
    assert next_circuit(CLOSED, Tally({"declined": 9}), RULES, NOW) is CLOSED  # not failures
    late = Tally({"accepted": 4, "failed": 4})  # taken, then failed: 4 calls, 4 failures
    assert next_circuit(CLOSED, late, RULES, NOW).state == "open"
    opened = next_circuit(CLOSED, Tally({"ambiguous": 2, "accepted": 2}), RULES, NOW)
    assert (opened.state, opened.probe_at) == ("open", NOW + timedelta(seconds=30))
    assert opened.reason == "2 of 4 calls failed"


def test_an_open_circuit_half_opens_then_a_probe_decides() -> None:
    opened = Circuit("open", NOW, NOW + timedelta(seconds=30))
    assert next_circuit(opened, Tally(), RULES, NOW + timedelta(seconds=29)) is opened
    half = next_circuit(opened, Tally(), RULES, NOW + timedelta(seconds=30))
    assert (half.state, half.probes_left) == ("half_open", 2)
    assert next_circuit(half, Tally(), RULES, LATER) is half  # no probe answered yet
    assert next_circuit(half, Tally({"accepted": 1}), RULES, LATER) is half  # wait: fail later?
    assert next_circuit(half, Tally({"accepted": 1, "succeeded": 1}), RULES, LATER).state == (
        "closed"
    )
    assert next_circuit(half, Tally({"declined": 1}), RULES, LATER).state == "closed"
    strict = HealthRules(failures=frozenset({"declined", "ambiguous"}))
    assert next_circuit(half, Tally({"declined": 1}), strict, LATER).state == "open"
    spent = Circuit("half_open", NOW, probes_left=0)
    assert next_circuit(spent, Tally(), RULES, NOW + timedelta(seconds=29)) is spent
    refilled = next_circuit(spent, Tally(), RULES, NOW + timedelta(seconds=30))
    assert (refilled.state, refilled.probes_left) == ("half_open", 2)  # a probe was lost
    again = next_circuit(half, Tally({"timed_out": 1}), RULES, LATER)
    assert (again.state, again.probe_at) == ("open", LATER + timedelta(seconds=30))
    taken = take_probe(half)
    assert taken is not None and taken.probes_left == 1
    assert take_probe(Circuit("half_open", NOW, probes_left=0)) is None
    assert take_probe(CLOSED) is None


PENDING = TaskState(status=TaskStatus.PENDING)
CREATING = TaskState(status=TaskStatus.CREATING, funds=Funds.FROZEN, order_submitted=True)


def test_version_2_skips_and_holds_a_pending_task() -> None:
    skipped, commands = WITHDRAWAL_V2.decide(PENDING, Skip("provider_unhealthy"), NOW)
    assert (skipped.status, skipped.funds, skipped.last_reason, commands) == (
        TaskStatus.SKIPPED,
        Funds.NONE,
        "provider_unhealthy",
        [],
    )
    held, commands = WITHDRAWAL_V2.decide(PENDING, Wait(LATER, "rate_limit"), NOW)
    assert held.next_check_at == LATER and commands == [StartTimer(Timer.ADMISSION, LATER)]
    due, commands = WITHDRAWAL_V2.decide(held, TimerFired(Timer.ADMISSION, LATER), LATER)
    assert due.next_check_at is None and commands == [Reconsider()]
    stale = TimerFired(Timer.ADMISSION, NOW)  # a hold that was moved since
    assert WITHDRAWAL_V2.decide(held, stale, LATER) == (held, [])


def test_version_2_waits_out_a_429_then_creates_again() -> None:
    throttled, commands = WITHDRAWAL_V2.decide(CREATING, OrderThrottled(2.0), NOW)
    due = NOW + timedelta(seconds=2)
    assert throttled.status == TaskStatus.CREATING and throttled.next_check_at == due
    assert commands == [StartTimer(Timer.CREATE_RETRY, due)]
    again, commands = WITHDRAWAL_V2.decide(throttled, TimerFired(Timer.CREATE_RETRY, due), due)
    assert again.next_check_at is None and commands == [RunActivity("create_order")]
    cancelled = TaskState(**{**throttled.__dict__, "cancel_requested": True})
    rechecked, commands = WITHDRAWAL_V2.decide(cancelled, TimerFired(Timer.CREATE_RETRY, due), due)
    assert rechecked.status == TaskStatus.NEGATIVE_EVAL and commands == [FollowUp(BeginRecheck())]


def test_version_1_reads_a_429_as_it_always_did_an_ambiguous_answer() -> None:
    new, commands = WITHDRAWAL.decide(CREATING, OrderThrottled(2.0), NOW)
    assert new.status == TaskStatus.NEGATIVE_EVAL and commands == [FollowUp(BeginRecheck())]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 1.0),
        ("3", 3.0),
        ("0", 0.0),
        ("86400", 300.0),  # capped
        ("soon", 1.0),
        ("Thu, 26 Nov 2026 12:00:07 GMT", 7.0),
        ("Thu, 26 Nov 2026 11:00:00 GMT", 0.0),  # in the past
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date(header: str | None, seconds: float) -> None:
    assert retry_after_s(header, now=NOW) == seconds
