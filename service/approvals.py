"""Four-eyes on money, carried out: manual-check decisions, proposals and approvals
in `manual_check_proposals` (migration 0008), by the rules of service/four_eyes.py.

A resolver's decision that needs no second person is applied at once (the
engine's `ManualResolved`), as it always was. One that does is a proposal: it
moves nothing. An approver who is not its proposer approves it, and the same
transaction applies `ManualResolved` through `Engine.apply` with the approver as
the actor and the proposer as the event's operator; or rejects it, and the task
stays in manual check for another decision.

A pending proposal that expired, or whose task moved on (a webhook settled it, it
was cancelled), is closed as `expired` or `superseded` by whichever comes first:
the worker's periodic checks (`close_stale`, every HEALTH_EVERY_S), or an approval
or rejection that finds it so; that one is refused (409) once the closing is
committed. The pending list never shows an expired proposal. Each proposal, and
each way one ends, is an audit row and its outbox event (engine/journal.py), in
the transaction that makes it.

Writers lock in the engine's order, the withdrawal's queue row, then the task,
then the proposal: never a deadlock with a transition of the same withdrawal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from engine import commit_hooks
from engine.contracts import Origin
from engine.engine import Engine
from engine.journal import Conn
from service import proposals
from service.four_eyes import (
    APPROVED,
    PENDING,
    REJECTED,
    FourEyesRules,
    Proposal,
    TaskNow,
    decider_refusal,
    open_for_decision,
    refusal,
    why_not_current,
)
from service.models import BadRequest
from service.principals import RESOLVER, Principal
from workflows.core import IllegalTransition, Storage
from workflows.withdrawal_events import ManualResolved


@dataclass(frozen=True)
class Decided:
    """A resolver's decision: applied at once (`proposal` None), or a proposal."""

    queue_id: str
    proposal: Proposal | None


async def decide(
    conn: Conn,
    engine: Engine,
    rules: FourEyesRules,
    person: Principal,
    task_id: str,
    decision: tuple[bool, str],
    now: datetime | None = None,
) -> Decided:
    """A resolver decides a manual check (`decision`: positive?, reason): applied at
    once, or a proposal when the rules want a second person."""
    if not person.may(RESOLVER):
        raise BadRequest(403, "forbidden", "this needs the resolver role")
    positive, reason = decision
    now = now or datetime.now(UTC)
    with commit_hooks.transaction_scope():
        async with conn.transaction():
            task = await proposals.lock_task(conn, task_id)
            await _no_decision_in_flight(conn, engine.storage, task, task_id, now)
            queue_id = str(task.queue["id"])
            if not rules.needs_approval(positive, task.amount_minor, task.currency):
                event = ManualResolved(positive, person.actor, reason)
                await _apply(conn, engine, task_id, event, person.actor)
                return Decided(queue_id, None)
            open_for_decision(task)
            outcome = "positive" if positive else "negative"
            values = (task_id, queue_id, outcome, reason, now, now + rules.ttl)
            return Decided(
                queue_id, await proposals.insert(conn, engine.storage, task, person, values)
            )


async def _no_decision_in_flight(
    conn: Conn, storage: Storage, task: TaskNow, task_id: str, now: datetime
) -> None:
    """One decision in flight per task: a current pending proposal refuses another
    decision (409); one that is no longer current is closed first."""
    waiting = await proposals.pending_for_task(conn, task_id)
    if waiting is None:
        return
    stale = why_not_current(waiting, task, now)
    if stale is None:
        message = f"proposal {waiting.id} awaits an approver: approve or reject it first"
        raise BadRequest(409, "proposal_pending", message)
    await proposals.close(conn, storage, task, waiting, (stale, None, None), now)


async def approve(
    conn: Conn,
    engine: Engine,
    person: Principal,
    proposal_id: str,
    reason: str | None = None,
    now: datetime | None = None,
) -> Proposal:
    """An approver approves another person's proposal: its decision is applied now."""
    return await _settle(conn, engine, person, proposal_id, (APPROVED, reason), now)


async def reject(
    conn: Conn,
    engine: Engine,
    person: Principal,
    proposal_id: str,
    reason: str,
    now: datetime | None = None,
) -> Proposal:
    """An approver rejects another person's proposal: the task stays in manual check."""
    return await _settle(conn, engine, person, proposal_id, (REJECTED, reason), now)


async def _settle(
    conn: Conn,
    engine: Engine,
    person: Principal,
    proposal_id: str,
    verdict: tuple[str, str | None],
    now: datetime | None,
) -> Proposal:
    now = now or datetime.now(UTC)
    with commit_hooks.transaction_scope():
        async with conn.transaction():
            task, proposal = await proposals.lock_proposal(conn, proposal_id)
            refused = decider_refusal(proposal, person)
            if refused is not None:
                raise refused
            stale = why_not_current(proposal, task, now)
            if stale is None:
                return await _carry_out(conn, engine, task, proposal, person, verdict, now)
            # Recorded (and committed) before the refusal: the next reader sees why.
            await proposals.close(conn, engine.storage, task, proposal, (stale, None, None), now)
    raise refusal(stale, proposal, task)


async def _carry_out(
    conn: Conn,
    engine: Engine,
    task: TaskNow,
    proposal: Proposal,
    person: Principal,
    verdict: tuple[str, str | None],
    now: datetime,
) -> Proposal:
    status, reason = verdict
    closed = await proposals.close(
        conn, engine.storage, task, proposal, (status, person, reason), now
    )
    if status == APPROVED:
        # The proposer decided; the approver let it happen: the event names the first,
        # its audit row (actor) the second.
        positive = proposal.outcome == "positive"
        event = ManualResolved(positive, proposal.proposed_by, proposal.reason)
        await _apply(conn, engine, proposal.task_id, event, person.actor)
    return closed


async def _apply(
    conn: Conn, engine: Engine, task_id: str, event: ManualResolved, actor: str
) -> None:
    try:
        await engine.apply(conn, task_id, event, origin=Origin(actor=actor))
    except IllegalTransition as exc:
        raise BadRequest(409, "not_allowed", str(exc)) from None


_STALE = """
SELECT p.id::text FROM manual_check_proposals p JOIN order_tasks t ON t.id = p.task_id
WHERE p.status = 'pending'
  AND (p.expires_at <= %s OR t.version <> p.task_version OR t.status <> 'MANUAL_CHECK')
ORDER BY p.expires_at
LIMIT 100
"""


async def close_stale(conn: Conn, storage: Storage, now: datetime | None = None) -> int:
    """The worker's periodic checks: close the pending proposals that expired or whose
    task moved on (at most 100 a run); returns how many."""
    now = now or datetime.now(UTC)
    found = await (await conn.execute(_STALE, (now,))).fetchall()
    closed = 0
    for row in found:
        with commit_hooks.transaction_scope():
            async with conn.transaction():
                task, proposal = await proposals.lock_proposal(conn, row["id"])
                stale = why_not_current(proposal, task, now)
                if proposal.status == PENDING and stale is not None:
                    await proposals.close(conn, storage, task, proposal, (stale, None, None), now)
                    closed += 1
    return closed
