"""Version 3 of the withdrawal machine: safe when the database forgets its last commits.

Theory of operation
-------------------
A failover to a standby that had not received the last commits (asynchronous
replication, or one of synchronous mode's edge cases) rewinds the service's
memory, but not the world's. The ledger and the providers still hold what the
lost timeline did: a hold frozen under a task's key, an order created with it.
The ids are derived from what cascade-core sent (workflows/identity.py), so the
timeline that follows, or cascade-core's resubmission, replays the same keys, and
every call is idempotent. What is left are the beliefs the lost commits took
with them: "nothing is frozen for this task" and "its order never left". Version
2 acts on them without asking, in four places:

- a task skipped for health or cancelled before it started ends with no ledger
  call (PENDING -skip/cancel-> SKIPPED/CANCELLED);
- a cancel while the freeze is in flight releases the key at once;
- a freeze that the ledger answers as a replay is taken for a fresh one, so the
  order is thought unsent;
- so the cascade may move on while the lost timeline's order can still pay: a
  double payout, and a hold frozen for ever.

Version 3 asks the world instead:

    PENDING -skip/cancel-> PENDING (target set) -void-> the ledger's word:
        no hold:        void the key (a tombstone: no late freeze lands) -> SKIPPED/CANCELLED
        released, void: -> SKIPPED/CANCELLED (funds RELEASED, as a voided key always is)
        frozen, committed (a lost timeline started it):
                        -> PENDING, resumed: the queue starts it next, whatever
                           its provider's health or a cancel; it runs to its end
    CREATING -frozen (replayed)-> the order may have left: the create is sent
                                  again with the same key, never thought unsent
    CREATING -cancel, freeze unanswered-> wait for the freeze's answer: fresh, the
                                  hold is released; a replay, the order is re-checked

    EXECUTING -SLA passed, status still open-> MANUAL_CHECK, and the order's status
                                  is asked again every `recheck_cap` until it is
                                  final or a person decides

A webhook the service acknowledged in a lost timeline is never sent again: the
provider has its 2xx. A task waiting for it would wait for ever, and one a
person has would be decided blind; so a manual check keeps asking the provider
(it is what a person would do first), and a final answer settles it.

The queue rule waits while an unstarted ending waits for the ledger, so the
cascade never moves past a task a lost timeline may have started, and starts a
resumed task before anything else. A task stopped because another succeeded
keeps version 1's direct ending: every path that could have started it in some
timeline left a trace at the ledger first, so the success was replayed there.
The cost is one `GET` and one rollback per task skipped or cancelled unstarted;
the usual path (a task that starts, and those stopped after a success) pays
nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from workflows import withdrawal_handlers as h
from workflows import withdrawal_observations as observed
from workflows.core import (
    Alert,
    Event,
    FollowUp,
    IllegalTransition,
    QueueDecision,
    Reconsider,
    RunActivity,
    StartTimer,
    TaskView,
)
from workflows.withdrawal import Transitions
from workflows.withdrawal_events import (
    TERMINAL,
    Cancel,
    Funds,
    FundsFrozen,
    HoldFound,
    KeyVoided,
    OrderAmbiguous,
    OrderSubmitting,
    ProviderNotFound,
    ProviderPending,
    QueueStatus,
    Skip,
    Start,
    StatusUnknown,
    Stop,
    TaskState,
    TaskStatus,
    Timer,
    TimerFired,
)
from workflows.withdrawal_handlers import Decision
from workflows.withdrawal_routing import V2_TRANSITIONS

S = TaskStatus
VOID = "void"  # the activity: ask the ledger, void the key if nothing is there
LOST_TIMELINE = "hold_from_a_lost_commit"
STILL_OPEN = (ProviderPending, ProviderNotFound, StatusUnknown)  # a status that is not final


def end_unstarted(state: TaskState, event: Event, _now: datetime) -> Decision:
    """Skip or cancel a task that never started here: first the ledger's word."""
    if state.target is not None:
        return state, []  # already asking
    if isinstance(event, Skip):
        target, reason = S.SKIPPED, event.reason
    else:
        target, reason = S.CANCELLED, "cancelled"
    return replace(state, target=target, last_reason=reason), [RunActivity(VOID)]


def voided(state: TaskState, event: Event, _now: datetime) -> Decision:
    """RELEASED, as version 1 records a key it voided (a cancel before the freeze):
    the ledger holds a tombstone or a released hold there, and reconciliation agrees."""
    if state.target is None:
        raise IllegalTransition(state.status, event.name)
    return replace(state, status=state.target, target=None, funds=Funds.RELEASED), []


def hold_found(state: TaskState, event: Event, _now: datetime) -> Decision:
    """A lost timeline started this task: it is resumed (the queue rule starts it
    next), as if its order had left; a cancel is kept, to settle it at its end."""
    assert isinstance(event, HoldFound)
    if state.target is None:
        raise IllegalTransition(state.status, event.name)
    new = replace(
        state,
        target=None,
        order_submitted=True,
        cancel_requested=state.cancel_requested or state.target == S.CANCELLED,
        last_reason=LOST_TIMELINE,
    )
    return new, [Reconsider()]  # its status is unchanged: the queue rule must still run


def start(state: TaskState, event: Event, now: datetime) -> Decision:
    if state.target is not None:  # ending, waiting for the ledger: never started
        return state, []
    return h.start(state, event, now)


def stop(state: TaskState, event: Event, now: datetime) -> Decision:
    """Another task succeeded. A resumed task cannot be started then (one hold per
    withdrawal): it ends, and a person settles the lost timeline's hold."""
    if state.target is not None:
        return state, []
    if state.order_submitted:
        detail = "a hold from a lost commit under a withdrawal that succeeded elsewhere"
        ended = replace(state, status=S.CANCELLED, last_reason=LOST_TIMELINE)
        return ended, [Alert("lost_commit_hold", detail)]
    return h.cancel_unstarted(state, event, now)


def frozen(state: TaskState, event: Event, now: datetime) -> Decision:
    assert isinstance(event, FundsFrozen)
    sent = state.order_submitted or event.replayed  # a replay: it may have left before
    new = replace(state, funds=Funds.FROZEN, order_submitted=sent)
    if not state.cancel_requested:
        # Not yet sent: noted in this transaction that it may be (version 1's `frozen`).
        return new, [RunActivity(h.CREATE) if sent else FollowUp(OrderSubmitting())]
    if sent:  # cancelled, and an order may exist: look before releasing anything
        return h.ambiguous(new, OrderAmbiguous("cancelled_after_a_lost_commit"), now)
    return replace(new, target=S.CANCELLED, last_reason="cancelled"), [RunActivity(h.RELEASE)]


def cancel_creating(state: TaskState, event: Event, now: datetime) -> Decision:
    """With the freeze unanswered, only its answer says whether a lost timeline froze
    the key (and perhaps sent the order): wait for it rather than release blindly."""
    if state.target is None and state.funds == Funds.NONE and not state.order_submitted:
        return h.mark_cancel(state, event, now)
    return h.cancel_creating(state, event, now)


def open_status(state: TaskState, event: Event, now: datetime) -> Decision:
    """EXECUTING, the status still open: past the SLA, a person takes it, and the
    provider is asked again later all the same."""
    new, commands = observed.open_status(state, event, now)
    if new.status != S.MANUAL_CHECK:
        return new, commands
    return _ask_again(new, now)


def manual_poll_due(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, TimerFired)
    if event.kind != Timer.STATUS_POLL or event.due_at != state.next_check_at:
        return state, []  # a superseded timer, or another kind
    if state.target is not None:
        return state, []  # a person (or the provider) already decided
    return replace(state, next_check_at=None), [RunActivity(h.CHECK)]


def manual_still_open(state: TaskState, event: Event, now: datetime) -> Decision:
    """Pending, not found or unknown while a person has it: ask again later, unless
    a poll is already due or the task is settling."""
    if state.target is not None or state.next_check_at is not None:
        return state, []
    return _ask_again(state, now)


def _ask_again(state: TaskState, now: datetime) -> Decision:
    due = now + state.timing.recheck_cap
    return replace(state, next_check_at=due), [StartTimer(Timer.STATUS_POLL, due)]


V3_TRANSITIONS: Transitions = {
    **V2_TRANSITIONS,
    (S.PENDING, Start): start,
    (S.PENDING, Stop): stop,
    (S.PENDING, Skip): end_unstarted,
    (S.PENDING, Cancel): end_unstarted,
    (S.PENDING, KeyVoided): voided,
    (S.PENDING, HoldFound): hold_found,
    (S.CREATING, FundsFrozen): frozen,
    (S.CREATING, Cancel): cancel_creating,
    **{(S.EXECUTING, still): open_status for still in STILL_OPEN},
    **{(S.MANUAL_CHECK, still): manual_still_open for still in STILL_OPEN},
    (S.MANUAL_CHECK, TimerFired): manual_poll_due,
}


def queue_decide(
    plain: QueueDecision,
    queue_status: str,
    tasks: Sequence[TaskView],
) -> QueueDecision:
    """Version 3's queue rule over version 2's decision (`plain`): wait while an
    unstarted ending waits for the ledger; start a resumed task before anything
    else; and a skip never starts the next task in the same breath."""
    if queue_status != QueueStatus.ACTIVE:
        return plain
    if any(t.status == S.PENDING and t.settling for t in tasks):
        return QueueDecision(None)
    resumed = [t for t in tasks if t.status == S.PENDING and t.resumed]
    busy = any(t.status not in TERMINAL and t.status != S.PENDING for t in tasks)
    succeeded = any(t.status == S.SUCCEEDED for t in tasks)
    if resumed and not busy and not succeeded:
        first = min(resumed, key=lambda t: t.position)
        return QueueDecision(None, start=(first.task_id,))
    if plain.skip:
        return QueueDecision(None, skip=plain.skip)
    return plain
