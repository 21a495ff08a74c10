"""Handlers of the withdrawal task machine, one per row of the table in withdrawal.py.

Each takes (state, event, now) and returns (new state, commands); none does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from workflows.core import (
    Alert,
    Command,
    Event,
    FollowUp,
    IllegalTransition,
    RunActivity,
    StartTimer,
)
from workflows.withdrawal_events import (
    HOLD_RELEASED,
    PROVIDER_OBSERVATIONS,
    TERMINAL,
    BeginRecheck,
    Funds,
    FundsInsufficient,
    ManualResolved,
    NothingToRelease,
    OrderAccepted,
    OrderAmbiguous,
    OrderDeclined,
    ProviderFailed,
    ProviderSucceeded,
    StatusUnknown,
    TaskState,
    TaskStatus,
    Timer,
    TimerFired,
)

Decision = tuple[TaskState, list[Command]]
Handler = Callable[[TaskState, Event, datetime], Decision]

S = TaskStatus
FREEZE, CREATE, CHECK, COMMIT, RELEASE = (
    "freeze",
    "create_order",
    "check_status",
    "commit",
    "release",
)


NO_ORDER = "no_order_at_provider"  # a recheck's status call found no order


def unchanged(state: TaskState, _event: Event, _now: datetime) -> Decision:
    return state, []


def foreign_observation(state: TaskState, event: Event) -> Decision | None:
    """An observation that is not about this task's order: alert, change nothing.

    Checked before every row, so that a provider holding a valid signature can
    never settle (or release) another provider's task, nor another order's. The
    answer to our own status call is, for that call's purpose, no answer at all:
    it goes on as StatusUnknown, so polling and rechecks keep their course.
    """
    if not isinstance(event, PROVIDER_OBSERVATIONS):
        return None
    ref = getattr(event, "provider_ref", None)
    if event.speaker is not None and event.speaker != state.provider:
        alert = Alert("wrong_provider", f"{event.speaker} reported on an order of {state.provider}")
    elif ref is not None and state.provider_ref is not None and ref != state.provider_ref:
        detail = f"provider order {ref} is not this task's order {state.provider_ref}"
        alert = Alert("provider_conflict", detail)
    else:
        return None
    if event.solicited and state.status in (S.EXECUTING, S.RECHECKING):
        return state, [alert, FollowUp(StatusUnknown(alert.kind))]
    return state, [alert]


# PENDING ------------------------------------------------------------------------
def start(state: TaskState, _e: Event, _now: datetime) -> Decision:
    return replace(state, status=S.CREATING), [RunActivity(FREEZE)]


def cancel_unstarted(state: TaskState, _e: Event, _now: datetime) -> Decision:
    return replace(state, status=S.CANCELLED, target=None), []


# CREATING -----------------------------------------------------------------------
def frozen(state: TaskState, _e: Event, _now: datetime) -> Decision:
    return replace(state, funds=Funds.FROZEN), [RunActivity(CREATE)]


def insufficient(state: TaskState, event: Event, _now: datetime) -> Decision:
    # Nothing was frozen, so there is nothing to release: evaluate and skip at once.
    assert isinstance(event, FundsInsufficient)
    # A hold the ledger had already released (a replay after a lost commit) is
    # recorded as released, as the ledger has it, so that reconciliation agrees.
    funds = Funds.RELEASED if event.reason == HOLD_RELEASED else state.funds
    new = replace(
        state, status=S.NEGATIVE_EVAL, target=S.SKIPPED, funds=funds, last_reason=event.reason
    )
    return new, [FollowUp(NothingToRelease())]


def submitting(state: TaskState, _e: Event, _now: datetime) -> Decision:
    # Committed before the create call leaves; the call itself is the next job,
    # so a worker dying mid-call is retried at this version and resends it.
    return replace(state, order_submitted=True), [RunActivity(CREATE)]


def accepted(state: TaskState, event: Event, now: datetime) -> Decision:
    assert isinstance(event, OrderAccepted)
    new, commands = executing(state, event.provider_ref, now)
    if event.paid:
        commands.append(FollowUp(ProviderSucceeded(event.provider_ref)))
    return new, commands


def executing(state: TaskState, ref: str | None, now: datetime) -> Decision:
    timing = state.timing
    deadline = now + timing.webhook_sla
    new = replace(
        state,
        status=S.EXECUTING,
        provider_ref=ref or state.provider_ref,
        order_submitted=True,
        webhook_deadline=deadline,
        next_check_at=None,
    )
    commands: list[Command] = [StartTimer(Timer.WEBHOOK_TIMEOUT, deadline)]
    if timing.poll_interval is not None:
        due = now + timing.poll_interval
        status_deadline = now + timing.status_timeout
        new = replace(new, next_check_at=due, status_deadline=status_deadline)
        commands += [
            StartTimer(Timer.STATUS_POLL, due),
            StartTimer(Timer.STATUS_TIMEOUT, status_deadline),
        ]
    return new, commands


def declined(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, OrderDeclined)
    new = replace(state, status=S.NEGATIVE_EVAL, target=S.SKIPPED, last_reason=event.reason)
    return new, [RunActivity(RELEASE)]


def ambiguous(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, OrderAmbiguous)
    new = replace(state, status=S.NEGATIVE_EVAL, target=None, last_reason=event.reason)
    return new, [FollowUp(BeginRecheck())]


def early_result(state: TaskState, event: Event, now: datetime) -> Decision:
    """A webhook that beat the create call's answer: the order exists, act on it."""
    if not state.order_submitted:
        return state, []
    ref = event.provider_ref if isinstance(event, ProviderSucceeded) else None
    new, commands = executing(state, ref, now)
    return new, [*commands, FollowUp(event)]


def cancel_creating(state: TaskState, event: Event, now: datetime) -> Decision:
    if state.target is not None:  # already settling (e.g. a second cancel): nothing new
        return state, []
    if state.order_submitted:
        return mark_cancel(state, event, now)
    # The freeze may be in flight: release anyway. The ledger voids an unknown
    # key, so a freeze that lands later is refused.
    new = replace(state, target=S.CANCELLED, last_reason="cancelled")
    return new, [RunActivity(RELEASE)]


def mark_cancel(state: TaskState, _e: Event, _now: datetime) -> Decision:
    return replace(state, cancel_requested=True), []


# EXECUTING / MANUAL_CHECK ----------------------------------------------------------
def succeeded(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, ProviderSucceeded)
    if state.target is not None:
        return settling_observation(state, S.SUCCEEDED)
    new = replace(state, target=S.SUCCEEDED, provider_ref=event.provider_ref or state.provider_ref)
    return new, [RunActivity(COMMIT)]


def failed(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, ProviderFailed)
    if state.target is not None:
        return settling_observation(state, S.FAILED)
    return replace(state, target=S.FAILED, last_reason=event.reason), [RunActivity(RELEASE)]


def settling_observation(state: TaskState, claims: TaskStatus) -> Decision:
    if claims == state.target:
        return state, []
    return state, [
        Alert("provider_conflict", f"provider says {claims} while settling {state.target}")
    ]


def open_status(state: TaskState, _e: Event, now: datetime) -> Decision:
    """Status says pending / unknown / not found while EXECUTING."""
    if state.target is not None:
        return state, []
    if state.sla_expired:
        return replace(state, status=S.MANUAL_CHECK, last_reason="no_final_status_after_sla"), []
    interval = state.timing.poll_interval
    if interval is None:
        return state, []
    due = now + interval
    return replace(state, next_check_at=due), [StartTimer(Timer.STATUS_POLL, due)]


def timer(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, TimerFired)
    deadline = {
        Timer.WEBHOOK_TIMEOUT: state.webhook_deadline,
        Timer.STATUS_TIMEOUT: state.status_deadline,
        Timer.STATUS_POLL: state.next_check_at,
        Timer.RECHECK: state.next_check_at,
    }[event.kind]
    if deadline != event.due_at or state.target is not None:
        return state, []  # a superseded timer
    if event.kind == Timer.RECHECK:
        new = replace(state, next_check_at=None, recheck_attempts=state.recheck_attempts + 1)
    elif event.kind == Timer.STATUS_POLL:
        new = replace(state, next_check_at=None)
    else:
        new = replace(state, sla_expired=True)
    return new, [RunActivity(CHECK)]


def manual(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, ManualResolved)
    if state.target is not None:
        raise IllegalTransition(state.status, "manual_resolved (already settling)")
    reason = f"manual:{event.operator}:{event.reason}"
    if event.positive:
        return replace(state, target=S.SUCCEEDED, last_reason=reason), [RunActivity(COMMIT)]
    return replace(state, target=S.FAILED, last_reason=reason), [RunActivity(RELEASE)]


# Settlement ----------------------------------------------------------------------
def committed(state: TaskState, _e: Event, _now: datetime) -> Decision:
    if state.target != S.SUCCEEDED:
        raise IllegalTransition(state.status, "funds_committed")
    return replace(state, status=S.SUCCEEDED, funds=Funds.COMMITTED, target=None), []


def released(state: TaskState, _e: Event, _now: datetime) -> Decision:
    if state.target not in TERMINAL or state.target == S.SUCCEEDED:
        raise IllegalTransition(state.status, "funds_released")
    assert state.target is not None
    return replace(state, status=state.target, funds=Funds.RELEASED, target=None), []


def nothing_released(state: TaskState, _e: Event, _now: datetime) -> Decision:
    # RELEASED: the ledger had released the hold before this task's freeze (insufficient)
    if state.target is None or state.funds not in (Funds.NONE, Funds.RELEASED):
        raise IllegalTransition(state.status, "nothing_to_release")
    return replace(state, status=state.target, target=None), []


# NEGATIVE_EVAL / RECHECKING ------------------------------------------------------------
def begin_recheck(state: TaskState, _e: Event, now: datetime) -> Decision:
    due = now + state.timing.recheck_delay(0)
    new = replace(state, status=S.RECHECKING, recheck_attempts=0, next_check_at=due)
    return new, [StartTimer(Timer.RECHECK, due)]


def recheck_found(state: TaskState, event: Event, now: datetime) -> Decision:
    if state.target is not None:
        if isinstance(event, ProviderSucceeded):
            return settling_observation(state, S.SUCCEEDED)
        # "Pending" while releasing: stale when the provider itself said the order
        # failed; a contradiction only when we concluded it never existed.
        if state.last_reason == NO_ORDER:
            return settling_observation(state, S.EXECUTING)
        return state, []
    ref = getattr(event, "provider_ref", None)
    new, commands = executing(state, ref, now)
    if isinstance(event, ProviderSucceeded):
        commands.append(FollowUp(event))
    return new, commands


def recheck_absent(state: TaskState, event: Event, _now: datetime) -> Decision:
    if state.target is not None:
        return state, []
    reason = event.reason if isinstance(event, ProviderFailed) else NO_ORDER
    return replace(state, target=S.FAILED, last_reason=reason), [RunActivity(RELEASE)]


def recheck_unknown(state: TaskState, event: Event, now: datetime) -> Decision:
    assert isinstance(event, StatusUnknown)
    if state.target is not None:
        return state, []
    if state.recheck_attempts >= state.timing.recheck_max_attempts:
        return replace(
            state, status=S.MANUAL_CHECK, next_check_at=None, last_reason=event.reason
        ), []
    due = now + state.timing.recheck_delay(state.recheck_attempts)
    return replace(state, next_check_at=due, last_reason=event.reason), [
        StartTimer(Timer.RECHECK, due)
    ]


# Terminal ---------------------------------------------------------------------------
def late_success(state: TaskState, _e: Event, _now: datetime) -> Decision:
    if state.status == S.SUCCEEDED:
        return state, []
    return state, [
        Alert("provider_conflict", f"provider reports success for a {state.status} task")
    ]


def late_failure(state: TaskState, _e: Event, _now: datetime) -> Decision:
    if state.status != S.SUCCEEDED:
        return state, []
    return state, [Alert("provider_conflict", "provider reports failure for a SUCCEEDED task")]
