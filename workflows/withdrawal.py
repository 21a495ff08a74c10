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

Before the table is consulted, a provider observation is checked against the
task it names (`h.foreign_observation`): one spoken by another provider than the
task's own (`wrong_provider`), or naming another provider order than the one
recorded (`provider_conflict`), raises an Alert and changes nothing, whatever
the row would have done. A provider can only speak for its own orders.

Cancellation rule: a task with no order at a provider is CANCELLED and its hold
released. A task whose create call may have left (`order_submitted`) is never
released blindly: it is marked `cancel_requested`, runs to its own end, and the
queue then starts nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from workflows import withdrawal_handlers as h
from workflows import withdrawal_observations as observed
from workflows.core import Event, IllegalTransition
from workflows.withdrawal_events import (
    TERMINAL,
    BeginRecheck,
    Cancel,
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
    TimerFired,
)
from workflows.withdrawal_handlers import Decision, Handler

S = TaskStatus
OBSERVATIONS = (ProviderPending, ProviderNotFound, StatusUnknown, TimerFired)
_terminal_rows: dict[tuple[TaskStatus, type[Event]], Handler] = {}
for _status in TERMINAL:
    _terminal_rows[(_status, ProviderSucceeded)] = h.late_success
    _terminal_rows[(_status, ProviderFailed)] = h.late_failure
    for _obs in OBSERVATIONS:
        _terminal_rows[(_status, _obs)] = h.unchanged

TRANSITIONS: dict[tuple[TaskStatus, type[Event]], Handler] = {
    (S.PENDING, Start): h.start,
    (S.PENDING, Stop): h.cancel_unstarted,
    (S.PENDING, Cancel): h.cancel_unstarted,
    **{(S.PENDING, obs): h.unchanged for obs in (*OBSERVATIONS, ProviderSucceeded, ProviderFailed)},
    (S.CREATING, FundsFrozen): h.frozen,
    (S.CREATING, FundsInsufficient): h.insufficient,
    (S.CREATING, OrderSubmitting): h.submitting,
    (S.CREATING, OrderAccepted): h.accepted,
    (S.CREATING, OrderDeclined): h.declined,
    (S.CREATING, OrderAmbiguous): h.ambiguous,
    (S.CREATING, ProviderSucceeded): h.early_result,
    (S.CREATING, ProviderFailed): h.early_result,
    (S.CREATING, ProviderPending): h.unchanged,
    (S.CREATING, TimerFired): h.unchanged,
    (S.CREATING, Cancel): h.cancel_creating,
    (S.CREATING, FundsReleased): h.released,
    (S.NEGATIVE_EVAL, FundsReleased): h.released,
    (S.NEGATIVE_EVAL, NothingToRelease): h.nothing_released,
    (S.NEGATIVE_EVAL, BeginRecheck): observed.begin_recheck,
    (S.NEGATIVE_EVAL, Cancel): h.mark_cancel,
    (S.NEGATIVE_EVAL, TimerFired): h.unchanged,
    (S.NEGATIVE_EVAL, ProviderSucceeded): h.late_success,
    (S.NEGATIVE_EVAL, ProviderFailed): h.unchanged,
    (S.NEGATIVE_EVAL, ProviderPending): h.unchanged,
    (S.RECHECKING, TimerFired): observed.timer,
    (S.RECHECKING, ProviderSucceeded): observed.recheck_found,
    (S.RECHECKING, ProviderPending): observed.recheck_found,
    (S.RECHECKING, ProviderFailed): observed.recheck_absent,
    (S.RECHECKING, ProviderNotFound): observed.recheck_absent,
    (S.RECHECKING, StatusUnknown): observed.recheck_unknown,
    (S.RECHECKING, FundsReleased): h.released,
    (S.RECHECKING, Cancel): h.mark_cancel,
    (S.EXECUTING, ProviderSucceeded): observed.succeeded,
    (S.EXECUTING, ProviderFailed): observed.failed,
    (S.EXECUTING, ProviderPending): observed.open_status,
    (S.EXECUTING, ProviderNotFound): observed.open_status,
    (S.EXECUTING, StatusUnknown): observed.open_status,
    (S.EXECUTING, TimerFired): observed.timer,
    (S.EXECUTING, FundsCommitted): h.committed,
    (S.EXECUTING, FundsReleased): h.released,
    (S.EXECUTING, Cancel): h.mark_cancel,
    (S.MANUAL_CHECK, ManualResolved): observed.manual,
    (S.MANUAL_CHECK, ProviderSucceeded): observed.succeeded,
    (S.MANUAL_CHECK, ProviderFailed): observed.failed,
    (S.MANUAL_CHECK, FundsCommitted): h.committed,
    (S.MANUAL_CHECK, FundsReleased): h.released,
    (S.MANUAL_CHECK, Cancel): h.mark_cancel,
    **{(S.MANUAL_CHECK, obs): h.unchanged for obs in OBSERVATIONS},
    **_terminal_rows,
}


Transitions = Mapping[tuple[TaskStatus, type[Event]], Handler]


def decide(
    state: TaskState, event: Event, now: datetime, table: Transitions = TRANSITIONS
) -> Decision:
    """Pure transition function. Raises IllegalTransition and changes nothing.
    `table`: another version's (workflows/registry.py); this module's by default."""
    handler = table.get((state.status, type(event)))
    if handler is None:
        raise IllegalTransition(state.status, event.name)
    return h.foreign_observation(state, event) or handler(state, event, now)
