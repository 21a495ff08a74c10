"""Handlers of the withdrawal task machine once its order may be at the provider,
one per row of the table in withdrawal.py: what the provider's observations
(webhooks, status answers) and the timers that ask for them do in EXECUTING and
MANUAL_CHECK, and in the recheck of an ambiguous create (NEGATIVE_EVAL,
RECHECKING). The states before, settlement and the terminal states are in
withdrawal_handlers.py.

Each takes (state, event, now) and returns (new state, commands); none does I/O.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from workflows.core import Alert, Event, FollowUp, IllegalTransition, RunActivity, StartTimer
from workflows.withdrawal_events import (
    ManualResolved,
    ProviderFailed,
    ProviderSucceeded,
    StatusUnknown,
    TaskState,
    TaskStatus,
    Timer,
    TimerFired,
)
from workflows.withdrawal_handlers import CHECK, COMMIT, RELEASE, Decision, executing

S = TaskStatus
NO_ORDER = "no_order_at_provider"  # a recheck's status call found no order


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
