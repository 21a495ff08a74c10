"""Version 4 of the withdrawal machine: health routing never costs a payout. Pure.

Theory of operation
-------------------
Versions 2 and 3 skip a task whose provider's circuit is open: it ends SKIPPED
and is never tried, even when every provider after it declines and the skipped
one has recovered by then; and a withdrawal whose every remaining provider stays
unhealthy past the wait bound (`HEALTH_MAX_WAIT_S`) fails with nothing tried.
The plain cascade, which tries every eligible provider, pays some of those.

Version 4 defers instead of dropping:

    PENDING -defer-> PENDING (target PENDING) -look-> the ledger's word:
        no hold:  PENDING, passed over (last_reason provider_unhealthy_deferred)
        frozen, committed (a lost timeline started it): resumed, as in version 3

A task is *deferred* once the queue has passed it over: it was marked so, or a
task after it in the cascade has begun. The queue rule tries the pending tasks
not deferred first, in fee order, then the deferred ones, in fee order: a
deferred provider is tried once every healthier provider has had its turn and
failed, if its circuit allows a call by then (closed, or half-open with a probe
left: the attempt is the probe).

Before a later task freezes, the passed-over task's key is looked up at the
ledger (one GET), as version 3's skip does and for the same reason: a timeline
the database lost may have started it, and then it must run first (one hold per
withdrawal). Unlike version 3's skip, nothing is voided: the key is still to be
used. A deferred task that is never needed (another task succeeded, or the
withdrawal was cancelled) ends through version 3's skip, which voids its key
after asking again; a task the cascade never reached keeps the direct ending.

When every pending task's provider is unhealthy, the first in try order is
held until the earliest probe, as in version 2, for as long as the queue may
wait in all. Past that bound the rule starts it anyway: the attempt is a probe
of a circuit that stayed open, and the withdrawal fails only when the providers
answer no. A circuit a person forced open is the exception: no rule overrides
a person, so once the bound has passed such tasks are skipped.

Everything else is version 3's machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from workflows.core import (
    Admit,
    Event,
    Hold,
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
from workflows.withdrawal import Transitions
from workflows.withdrawal_events import (
    TERMINAL,
    Defer,
    NoHold,
    QueueStatus,
    TaskState,
    TaskStatus,
)
from workflows.withdrawal_handlers import Decision
from workflows.withdrawal_timelines import V3_TRANSITIONS

S = TaskStatus
DEFERRED = "provider_unhealthy_deferred"
LOOK = "look"  # the activity: ask the ledger what it holds under the key, change nothing


def defer(state: TaskState, event: Event, _now: datetime) -> Decision:
    """Pass it over, once the ledger says no lost timeline started it."""
    assert isinstance(event, Defer)
    if state.target is not None or state.order_submitted or state.last_reason == DEFERRED:
        return state, []  # asking already, resumed, or passed over before
    return replace(state, target=S.PENDING, last_reason=event.reason), [RunActivity(LOOK)]


def no_hold(state: TaskState, event: Event, _now: datetime) -> Decision:
    """Passed over; the queue rule runs again, though the status did not change."""
    if state.target != S.PENDING:
        raise IllegalTransition(state.status, event.name)
    return replace(state, target=None), [Reconsider()]


V4_TRANSITIONS: Transitions = {
    **V3_TRANSITIONS,
    (S.PENDING, Defer): defer,
    (S.PENDING, NoHold): no_hold,
}


def deferred_ids(tasks: Sequence[TaskView]) -> frozenset[str]:
    """Pending tasks the queue passed over: marked so, or with a later task begun."""
    last = max((t.position for t in tasks if t.status != S.PENDING), default=-1)
    return frozenset(
        t.task_id for t in tasks if t.status == S.PENDING and (t.passed_over or t.position < last)
    )


def try_order(tasks: Sequence[TaskView]) -> list[TaskView]:
    """Pending tasks, those not deferred first, each group in fee order."""
    deferred = deferred_ids(tasks)
    pending = [t for t in tasks if t.status == S.PENDING]
    return sorted(pending, key=lambda t: (t.task_id in deferred, t.position))


def queue_decide(
    queue_status: str,
    cancel_requested: bool,
    tasks: Sequence[TaskView],
    routing: Routing | None = None,
) -> QueueDecision:
    if queue_status != QueueStatus.ACTIVE:
        return QueueDecision(None)
    if any(t.status == S.PENDING and t.settling for t in tasks):
        return QueueDecision(None)  # an unstarted ending waits for the ledger's word
    busy = any(t.status not in TERMINAL and t.status != S.PENDING for t in tasks)
    if any(t.status == S.SUCCEEDED for t in tasks):
        return _end(tasks, QueueStatus.COMPLETED)
    if busy:
        return QueueDecision(None)
    ordered = try_order(tasks)
    resumed = [t for t in ordered if t.resumed]
    if resumed:  # a lost timeline started it: it runs before anything, a cancel too
        return QueueDecision(None, start=(min(resumed, key=lambda t: t.position).task_id,))
    if cancel_requested:
        return _end(tasks, QueueStatus.CANCELLED)
    if not ordered:
        return QueueDecision(QueueStatus.FAILED)
    if routing is None:
        return QueueDecision(None, start=(ordered[0].task_id,))
    return route(ordered, deferred_ids(tasks), routing)


def _end(tasks: Sequence[TaskView], status: str) -> QueueDecision:
    """Stop what the cascade never reached; ask the ledger about what it passed
    over first (version 3's skip), and end the queue once every answer is in."""
    deferred = deferred_ids(tasks)
    pending = [t for t in tasks if t.status == S.PENDING]
    ask = tuple((t.task_id, UNHEALTHY) for t in pending if t.task_id in deferred and not t.resumed)
    stop = tuple(t.task_id for t in pending if t.task_id not in deferred or t.resumed)
    if ask:
        return QueueDecision(None, stop=stop, skip=ask)
    return QueueDecision(status, stop=stop)


def route(ordered: Sequence[TaskView], deferred: frozenset[str], routing: Routing) -> QueueDecision:
    """`ordered`: the pending tasks in try order, not empty. Unhealthy tasks before
    the one that would start are deferred first, and nothing starts in the same
    breath: the ledger answers for them (a lost timeline's task runs first)."""
    for i, task in enumerate(ordered):
        verdict = routing.verdicts.get(task.task_id, Admit())
        if isinstance(verdict, Unhealthy):
            continue
        newly = _defer(ordered[:i], deferred)
        if newly:
            return QueueDecision(None, skip=newly)
        if isinstance(verdict, Limited):
            return QueueDecision(None, hold=Hold(task.task_id, verdict.until, verdict.reason))
        return QueueDecision(None, start=(task.task_id,))
    return _all_unhealthy(ordered, deferred, routing)


def _defer(passed: Sequence[TaskView], deferred: frozenset[str]) -> tuple[tuple[str, str], ...]:
    return tuple((t.task_id, DEFERRED) for t in passed if t.task_id not in deferred)


def _all_unhealthy(
    ordered: Sequence[TaskView], deferred: frozenset[str], routing: Routing
) -> QueueDecision:
    """Wait for the earliest probe while the queue may; past that, try the first
    task a person has not closed off (a probe), or end the ones left."""
    verdicts = [routing.verdicts[t.task_id] for t in ordered]
    unhealthy = [v for v in verdicts if isinstance(v, Unhealthy)]
    assert len(unhealthy) == len(ordered)  # the rule gets here only when all are
    if routing.now < routing.wait_until:
        until = min(min(v.probe_at for v in unhealthy), routing.wait_until)
        return QueueDecision(None, hold=Hold(ordered[0].task_id, until, ALL_UNHEALTHY))
    for i, (task, verdict) in enumerate(zip(ordered, unhealthy, strict=True)):
        if not verdict.forced:
            newly = _defer(ordered[:i], deferred)
            return (
                QueueDecision(None, skip=newly)
                if newly
                else QueueDecision(None, start=(task.task_id,))
            )
    return QueueDecision(None, skip=tuple((t.task_id, UNHEALTHY) for t in ordered))
