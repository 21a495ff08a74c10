"""Handlers of the withdrawal task machine, one per row of the table in withdrawal.py:
before the order is at the provider (PENDING, CREATING), settlement, and the
terminal states; with the machine's vocabulary (Decision, Handler, the activity
names). Once the order may be at the provider: withdrawal_observations.py.

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
    NothingToRelease,
    OrderAccepted,
    OrderAmbiguous,
    OrderDeclined,
    OrderSubmitting,
    ProviderSucceeded,
    StatusUnknown,
    TaskState,
    TaskStatus,
    Timer,
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
    # The order may be sent from now on: noted in the same transaction as the hold
    # (the next event's two rows, one commit), rather than by the create activity's
    # first call, which cost a transaction of its own (issue 24). A withdrawal that
    # froze before this still notes it there (create_order's OrderSubmitting).
    return replace(state, funds=Funds.FROZEN), [FollowUp(OrderSubmitting())]


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
