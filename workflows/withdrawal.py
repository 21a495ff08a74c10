"""The withdrawal task machine: one provider attempt of a withdrawal cascade.

Theory of operation
-------------------
A withdrawal is a queue of tasks, one per provider, tried in order. Each task
is the machine below. `decide(state, event, now)` is pure: it looks the pair
(status, event type) up in TRANSITIONS and returns the new state plus commands
(run an activity after commit, start a durable timer, apply a follow-up event,
raise an alert). A pair missing from the table raises IllegalTransition and
changes nothing.

Money is never moved by a decision, only requested. A task that must end with
money moved first records its `target` and asks for the ledger call; it enters
the terminal status only on the ledger's 200 (FundsCommitted/FundsReleased).
So a crash between the call and the commit replays an idempotent call, never a
second payout.

    PENDING -start-> CREATING (freeze) -frozen-> CREATING (create order)
    CREATING -accepted-> EXECUTING -succeeded-> (commit) SUCCEEDED
    CREATING -declined/insufficient-> NEGATIVE_EVAL (release) -> SKIPPED
    CREATING -ambiguous-> NEGATIVE_EVAL -> RECHECKING (status on a backoff)
    RECHECKING -order seen-> EXECUTING | -no order/failed-> (release) FAILED
    RECHECKING -attempts exhausted-> MANUAL_CHECK
    EXECUTING -SLA fired, status still open-> MANUAL_CHECK -operator-> SUCCEEDED/FAILED

Observations from outside (webhooks, status answers, timers) that no longer
apply are ignored: a timer whose deadline was moved, a pending status after the
task ended. A provider that contradicts a final state raises an Alert; no money
moves without a decision.

Cancellation rule: a task with no order at a provider is CANCELLED and its hold
released. A task whose create call may have left (`order_submitted`) is never
released blindly: it is marked `cancel_requested`, runs to its own end, and the
queue then starts nothing new.
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
    TERMINAL,
    BeginRecheck,
    Cancel,
    Funds,
    FundsCommitted,
    FundsFrozen,
    FundsInsufficient,
    FundsReleased,
    ManualResolved,
    NothingToRelease,
    OrderAccepted,
    OrderAmbiguous,
    OrderDeclined,
    OrderSubmitting,
    ProviderFailed,
    ProviderNotFound,
    ProviderPending,
    ProviderSucceeded,
    Start,
    StatusUnknown,
    Stop,
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


def _unchanged(state: TaskState, _event: Event, _now: datetime) -> Decision:
    return state, []


# PENDING ------------------------------------------------------------------------
def _start(state: TaskState, _e: Event, _now: datetime) -> Decision:
    return replace(state, status=S.CREATING), [RunActivity(FREEZE)]


def _cancel_unstarted(state: TaskState, _e: Event, _now: datetime) -> Decision:
    return replace(state, status=S.CANCELLED, target=None), []


# CREATING -----------------------------------------------------------------------
def _frozen(state: TaskState, _e: Event, _now: datetime) -> Decision:
    return replace(state, funds=Funds.FROZEN), [RunActivity(CREATE)]


def _insufficient(state: TaskState, _e: Event, _now: datetime) -> Decision:
    # Nothing was frozen, so there is nothing to release: evaluate and skip at once.
    new = replace(
        state, status=S.NEGATIVE_EVAL, target=S.SKIPPED, last_reason="insufficient_balance"
    )
    return new, [FollowUp(NothingToRelease())]


def _submitting(state: TaskState, _e: Event, _now: datetime) -> Decision:
    # Committed before the create call leaves; the call itself is the next job,
    # so a worker dying mid-call is retried at this version and resends it.
    return replace(state, order_submitted=True), [RunActivity(CREATE)]


def _accepted(state: TaskState, event: Event, now: datetime) -> Decision:
    assert isinstance(event, OrderAccepted)
    new, commands = _executing(state, event.provider_ref, now)
    if event.paid:
        commands.append(FollowUp(ProviderSucceeded(event.provider_ref)))
    return new, commands


def _executing(state: TaskState, ref: str | None, now: datetime) -> Decision:
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


def _declined(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, OrderDeclined)
    new = replace(state, status=S.NEGATIVE_EVAL, target=S.SKIPPED, last_reason=event.reason)
    return new, [RunActivity(RELEASE)]


def _ambiguous(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, OrderAmbiguous)
    new = replace(state, status=S.NEGATIVE_EVAL, target=None, last_reason=event.reason)
    return new, [FollowUp(BeginRecheck())]


def _early_result(state: TaskState, event: Event, now: datetime) -> Decision:
    """A webhook that beat the create call's answer: the order exists, act on it."""
    if not state.order_submitted:
        return state, []
    ref = event.provider_ref if isinstance(event, ProviderSucceeded) else None
    new, commands = _executing(state, ref, now)
    return new, [*commands, FollowUp(event)]


def _cancel_creating(state: TaskState, event: Event, now: datetime) -> Decision:
    if state.target is not None:  # already settling (e.g. a second cancel): nothing new
        return state, []
    if state.order_submitted:
        return _mark_cancel(state, event, now)
    # The freeze may be in flight: release anyway. The ledger voids an unknown
    # key, so a freeze that lands later is refused.
    new = replace(state, target=S.CANCELLED, last_reason="cancelled")
    return new, [RunActivity(RELEASE)]


def _mark_cancel(state: TaskState, _e: Event, _now: datetime) -> Decision:
    return replace(state, cancel_requested=True), []


# EXECUTING / MANUAL_CHECK ----------------------------------------------------------
def _succeeded(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, ProviderSucceeded)
    if state.target is not None:
        return _settling_observation(state, S.SUCCEEDED)
    new = replace(state, target=S.SUCCEEDED, provider_ref=event.provider_ref or state.provider_ref)
    return new, [RunActivity(COMMIT)]


def _failed(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, ProviderFailed)
    if state.target is not None:
        return _settling_observation(state, S.FAILED)
    return replace(state, target=S.FAILED, last_reason=event.reason), [RunActivity(RELEASE)]


def _settling_observation(state: TaskState, claims: TaskStatus) -> Decision:
    if claims == state.target:
        return state, []
    return state, [
        Alert("provider_conflict", f"provider says {claims} while settling {state.target}")
    ]


def _open_status(state: TaskState, _e: Event, now: datetime) -> Decision:
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


def _timer(state: TaskState, event: Event, _now: datetime) -> Decision:
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


def _manual(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, ManualResolved)
    if state.target is not None:
        raise IllegalTransition(state.status, "manual_resolved (already settling)")
    reason = f"manual:{event.operator}:{event.reason}"
    if event.positive:
        return replace(state, target=S.SUCCEEDED, last_reason=reason), [RunActivity(COMMIT)]
    return replace(state, target=S.FAILED, last_reason=reason), [RunActivity(RELEASE)]


# Settlement ----------------------------------------------------------------------
def _committed(state: TaskState, _e: Event, _now: datetime) -> Decision:
    if state.target != S.SUCCEEDED:
        raise IllegalTransition(state.status, "funds_committed")
    return replace(state, status=S.SUCCEEDED, funds=Funds.COMMITTED, target=None), []


def _released(state: TaskState, _e: Event, _now: datetime) -> Decision:
    if state.target not in TERMINAL or state.target == S.SUCCEEDED:
        raise IllegalTransition(state.status, "funds_released")
    assert state.target is not None
    return replace(state, status=state.target, funds=Funds.RELEASED, target=None), []


def _nothing_released(state: TaskState, _e: Event, _now: datetime) -> Decision:
    if state.target is None or state.funds != Funds.NONE:
        raise IllegalTransition(state.status, "nothing_to_release")
    return replace(state, status=state.target, target=None), []


# NEGATIVE_EVAL / RECHECKING ------------------------------------------------------------
def _begin_recheck(state: TaskState, _e: Event, now: datetime) -> Decision:
    due = now + state.timing.recheck_delay(0)
    new = replace(state, status=S.RECHECKING, recheck_attempts=0, next_check_at=due)
    return new, [StartTimer(Timer.RECHECK, due)]


def _recheck_found(state: TaskState, event: Event, now: datetime) -> Decision:
    if state.target is not None:
        claims = S.SUCCEEDED if isinstance(event, ProviderSucceeded) else S.EXECUTING
        return _settling_observation(state, claims)
    ref = getattr(event, "provider_ref", None)
    new, commands = _executing(state, ref, now)
    if isinstance(event, ProviderSucceeded):
        commands.append(FollowUp(event))
    return new, commands


def _recheck_absent(state: TaskState, event: Event, _now: datetime) -> Decision:
    if state.target is not None:
        return state, []
    reason = event.reason if isinstance(event, ProviderFailed) else "no_order_at_provider"
    return replace(state, target=S.FAILED, last_reason=reason), [RunActivity(RELEASE)]


def _recheck_unknown(state: TaskState, event: Event, now: datetime) -> Decision:
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
def _late_success(state: TaskState, _e: Event, _now: datetime) -> Decision:
    if state.status == S.SUCCEEDED:
        return state, []
    return state, [
        Alert("provider_conflict", f"provider reports success for a {state.status} task")
    ]


def _late_failure(state: TaskState, _e: Event, _now: datetime) -> Decision:
    if state.status != S.SUCCEEDED:
        return state, []
    return state, [Alert("provider_conflict", "provider reports failure for a SUCCEEDED task")]


OBSERVATIONS = (ProviderPending, ProviderNotFound, StatusUnknown, TimerFired)
_terminal_rows: dict[tuple[TaskStatus, type[Event]], Handler] = {}
for _status in TERMINAL:
    _terminal_rows[(_status, ProviderSucceeded)] = _late_success
    _terminal_rows[(_status, ProviderFailed)] = _late_failure
    for _obs in OBSERVATIONS:
        _terminal_rows[(_status, _obs)] = _unchanged

TRANSITIONS: dict[tuple[TaskStatus, type[Event]], Handler] = {
    (S.PENDING, Start): _start,
    (S.PENDING, Stop): _cancel_unstarted,
    (S.PENDING, Cancel): _cancel_unstarted,
    **{(S.PENDING, obs): _unchanged for obs in (*OBSERVATIONS, ProviderSucceeded, ProviderFailed)},
    (S.CREATING, FundsFrozen): _frozen,
    (S.CREATING, FundsInsufficient): _insufficient,
    (S.CREATING, OrderSubmitting): _submitting,
    (S.CREATING, OrderAccepted): _accepted,
    (S.CREATING, OrderDeclined): _declined,
    (S.CREATING, OrderAmbiguous): _ambiguous,
    (S.CREATING, ProviderSucceeded): _early_result,
    (S.CREATING, ProviderFailed): _early_result,
    (S.CREATING, ProviderPending): _unchanged,
    (S.CREATING, TimerFired): _unchanged,
    (S.CREATING, Cancel): _cancel_creating,
    (S.CREATING, FundsReleased): _released,
    (S.NEGATIVE_EVAL, FundsReleased): _released,
    (S.NEGATIVE_EVAL, NothingToRelease): _nothing_released,
    (S.NEGATIVE_EVAL, BeginRecheck): _begin_recheck,
    (S.NEGATIVE_EVAL, Cancel): _mark_cancel,
    (S.NEGATIVE_EVAL, TimerFired): _unchanged,
    (S.NEGATIVE_EVAL, ProviderSucceeded): _late_success,
    (S.NEGATIVE_EVAL, ProviderFailed): _unchanged,
    (S.NEGATIVE_EVAL, ProviderPending): _unchanged,
    (S.RECHECKING, TimerFired): _timer,
    (S.RECHECKING, ProviderSucceeded): _recheck_found,
    (S.RECHECKING, ProviderPending): _recheck_found,
    (S.RECHECKING, ProviderFailed): _recheck_absent,
    (S.RECHECKING, ProviderNotFound): _recheck_absent,
    (S.RECHECKING, StatusUnknown): _recheck_unknown,
    (S.RECHECKING, FundsReleased): _released,
    (S.RECHECKING, Cancel): _mark_cancel,
    (S.EXECUTING, ProviderSucceeded): _succeeded,
    (S.EXECUTING, ProviderFailed): _failed,
    (S.EXECUTING, ProviderPending): _open_status,
    (S.EXECUTING, ProviderNotFound): _open_status,
    (S.EXECUTING, StatusUnknown): _open_status,
    (S.EXECUTING, TimerFired): _timer,
    (S.EXECUTING, FundsCommitted): _committed,
    (S.EXECUTING, FundsReleased): _released,
    (S.EXECUTING, Cancel): _mark_cancel,
    (S.MANUAL_CHECK, ManualResolved): _manual,
    (S.MANUAL_CHECK, ProviderSucceeded): _succeeded,
    (S.MANUAL_CHECK, ProviderFailed): _failed,
    (S.MANUAL_CHECK, FundsCommitted): _committed,
    (S.MANUAL_CHECK, FundsReleased): _released,
    (S.MANUAL_CHECK, Cancel): _mark_cancel,
    **{(S.MANUAL_CHECK, obs): _unchanged for obs in OBSERVATIONS},
    **_terminal_rows,
}


def decide(state: TaskState, event: Event, now: datetime) -> Decision:
    """Pure transition function. Raises IllegalTransition and changes nothing."""
    handler = TRANSITIONS.get((state.status, type(event)))
    if handler is None:
        raise IllegalTransition(state.status, event.name)
    return handler(state, event, now)
