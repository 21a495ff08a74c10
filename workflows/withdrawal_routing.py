"""Version 2 of the withdrawal machine: version 1 plus the rows that health- and
limit-aware routing (workflows/routing.py) and provider throttling need.

    PENDING -skip(provider_unhealthy)-> SKIPPED             (no freeze, no call)
    PENDING -wait(until)-> PENDING, timer; -admission tick-> the queue rule again
    CREATING -throttled (429, Retry-After)-> CREATING, timer; -retry tick-> create again

Version 1 keeps its own table: a 429 there is what it always was, an ambiguous
answer (re-checked), so withdrawals in flight across the deploy are unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from workflows import withdrawal_handlers as h
from workflows.core import Event, Reconsider, RunActivity, StartTimer
from workflows.withdrawal import TRANSITIONS, Transitions
from workflows.withdrawal_events import (
    OrderAmbiguous,
    OrderThrottled,
    Skip,
    TaskState,
    TaskStatus,
    Timer,
    TimerFired,
    Wait,
)
from workflows.withdrawal_handlers import Decision

S = TaskStatus


def skip(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, Skip)
    return replace(state, status=S.SKIPPED, last_reason=event.reason), []


def wait(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, Wait)
    new = replace(state, next_check_at=event.until, last_reason=event.reason)
    return new, [StartTimer(Timer.ADMISSION, event.until)]


def admission_due(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, TimerFired)
    if event.kind != Timer.ADMISSION or event.due_at != state.next_check_at:
        return state, []  # a hold that was moved, or another task's kind
    return replace(state, next_check_at=None), [Reconsider()]


def throttled(state: TaskState, event: Event, now: datetime) -> Decision:
    assert isinstance(event, OrderThrottled)
    due = now + timedelta(seconds=event.retry_after_s)
    new = replace(state, next_check_at=due, last_reason=event.reason)
    return new, [StartTimer(Timer.CREATE_RETRY, due)]


def create_retry_due(state: TaskState, event: Event, now: datetime) -> Decision:
    assert isinstance(event, TimerFired)
    if event.kind != Timer.CREATE_RETRY or event.due_at != state.next_check_at:
        return state, []
    if state.target is not None:
        return state, []
    waited = replace(state, next_check_at=None)
    if state.cancel_requested:
        # The 429 said no order was made, but nothing is released blindly: re-check.
        return h.ambiguous(waited, OrderAmbiguous("throttled_then_cancelled"), now)
    return waited, [RunActivity(h.CREATE)]


def throttled_as_ambiguous(state: TaskState, event: Event, now: datetime) -> Decision:
    """Version 1's reading of a 429: an ambiguous answer."""
    assert isinstance(event, OrderThrottled)
    return h.ambiguous(state, OrderAmbiguous(event.reason), now)


V1_TRANSITIONS: Transitions = {**TRANSITIONS, (S.CREATING, OrderThrottled): throttled_as_ambiguous}
V2_TRANSITIONS: Transitions = {
    **TRANSITIONS,
    (S.PENDING, Skip): skip,
    (S.PENDING, Wait): wait,
    (S.PENDING, TimerFired): admission_due,
    (S.CREATING, OrderThrottled): throttled,
    (S.CREATING, TimerFired): create_retry_due,
}
