"""The rows of `manual_check_proposals` (migration 0008) and their audit entries:
the SQL of service/approvals.py's flow, beside its one use.

Each proposal, and each way one ends, is an audit row in `order_task_events` and an
outbox event (`journal`, engine/journal.py), in the transaction that writes it:
`manual_check_<what>` / `<prefix>.task.manual.<what>`, `what` one of proposed,
approved, rejected, expired, superseded. Its payload names the proposer and, once
decided, who decided (the service itself for an expiry or a supersession).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.contracts import SYSTEM
from engine.journal import Conn, Entry, journal
from service.four_eyes import Proposal, TaskNow
from service.models import BadRequest
from service.principals import Principal
from workflows.core import Storage
from workflows.money import format_minor

_LOCK_TASK = """
SELECT to_jsonb(q) AS queue_row, t.status::text AS status, t.version, t.target::text AS target,
       q.amount_minor, q.currency
FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id
WHERE t.id = %s
FOR UPDATE OF q, t
"""
_COLUMNS = (
    "p.id::text, p.task_id::text, p.queue_id::text, p.outcome, p.reason, p.proposed_by,"
    " p.proposer_issuer, p.proposer_subject, p.proposed_at, p.task_version, p.status,"
    " p.decided_by, p.decided_at, p.decision_reason, p.expires_at"
)
_FIND = f"SELECT {_COLUMNS} FROM manual_check_proposals p WHERE p.id = %s"  # noqa: S608
_PENDING_OF_TASK = (
    f"SELECT {_COLUMNS} FROM manual_check_proposals p"  # noqa: S608
    " WHERE p.task_id = %s AND p.status = 'pending'"
)


async def lock_task(conn: Conn, task_id: str) -> TaskNow:
    row = await (await conn.execute(_LOCK_TASK, (task_id,))).fetchone()
    if row is None:
        raise BadRequest(404, "not_found", "no such task")
    return TaskNow(row["queue_row"], row["status"], row["version"], row["target"], *_money(row))


def _money(row: dict[str, Any]) -> tuple[int, str]:
    return int(row["amount_minor"]), str(row["currency"])


async def find(conn: Conn, proposal_id: str, *, lock: bool = False) -> Proposal:
    query = _FIND + (" FOR UPDATE" if lock else "")
    row = await (await conn.execute(query, (proposal_id,))).fetchone()
    if row is None:
        raise BadRequest(404, "not_found", "no such proposal")
    return Proposal(**row)


async def pending_for_task(conn: Conn, task_id: str) -> Proposal | None:
    row = await (await conn.execute(_PENDING_OF_TASK, (task_id,))).fetchone()
    return None if row is None else Proposal(**row)


async def lock_proposal(conn: Conn, proposal_id: str) -> tuple[TaskNow, Proposal]:
    task_id = (await find(conn, proposal_id)).task_id  # its task never changes
    task = await lock_task(conn, task_id)
    return task, await find(conn, proposal_id, lock=True)


_INSERT = f"""
INSERT INTO manual_check_proposals AS p (task_id, queue_id, outcome, reason, proposed_at,
    expires_at, proposed_by, proposer_issuer, proposer_subject, task_version)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING {_COLUMNS}
"""  # noqa: S608 - a constant column list


async def insert(
    conn: Conn, storage: Storage, task: TaskNow, person: Principal, values: tuple[Any, ...]
) -> Proposal:
    """A new proposal, under its task's lock (so no other can be inserted meanwhile),
    and its audit row: `values`: task id, queue id, outcome, reason, proposed at, expires at."""
    who = (person.actor, person.issuer, person.subject, task.version)
    row = await (await conn.execute(_INSERT, (*values, *who))).fetchone()
    assert row is not None  # INSERT ... RETURNING
    proposal = Proposal(**row)
    await _journal(conn, storage, task, proposal, "proposed", person.actor)
    return proposal


_CLOSE = f"""
UPDATE manual_check_proposals AS p
SET status = %s, decided_by = %s, decider_issuer = %s, decider_subject = %s,
    decision_reason = %s, decided_at = %s
WHERE p.id = %s AND p.status = 'pending'
RETURNING {_COLUMNS}
"""  # noqa: S608 - a constant column list


async def close(
    conn: Conn,
    storage: Storage,
    task: TaskNow,
    proposal: Proposal,
    how: tuple[str, Principal | None, str | None],
    now: datetime,
) -> Proposal:
    """End a pending proposal (`how`: status, by whom (None: the service), why)."""
    status, person, reason = how
    who = (person.actor, person.issuer, person.subject) if person else (SYSTEM.actor, None, None)
    row = await (await conn.execute(_CLOSE, (status, *who, reason, now, proposal.id))).fetchone()
    assert row is not None  # pending, and locked by the caller
    closed = Proposal(**row)
    await _journal(conn, storage, task, closed, status, who[0])
    return closed


async def _journal(
    conn: Conn, storage: Storage, task: TaskNow, proposal: Proposal, what: str, actor: str
) -> None:
    """`manual_check_<what>` in the audit trail, `<prefix>.task.manual.<what>` in the
    outbox; the payload names the proposer and, once decided, the decider."""
    view = proposal.view()
    payload = {"proposal_id": view.pop("id"), **view, "task_status": task.status}
    del payload["task_id"], payload["queue_id"]  # the audit row has both
    entry = Entry(
        f"task.manual.{what}",
        proposal.task_id,
        task.status,
        task.status,
        f"manual_check_{what}",
        payload,
        actor,
        None,
    )
    await journal(conn, storage, task.queue, entry)


_AWAITING = f"""
SELECT {_COLUMNS}, q.order_id, q.amount_minor, q.currency, t.provider,
       t.status::text AS task_status
FROM manual_check_proposals p
JOIN order_tasks t ON t.id = p.task_id JOIN order_queues q ON q.id = p.queue_id
WHERE p.status = 'pending' AND p.expires_at > %s
ORDER BY p.proposed_at
"""  # noqa: S608 - a constant column list


async def awaiting_approval(
    conn: Conn, now: datetime | None = None
) -> list[tuple[Proposal, dict[str, Any]]]:
    """Pending proposals that have not expired, oldest first, each with its withdrawal
    (order id, amount as minor units and as a decimal string, provider, task status)."""
    rows = await (await conn.execute(_AWAITING, (now or datetime.now(UTC),))).fetchall()
    listed = []
    for row in rows:
        context = {k: row.pop(k) for k in ("order_id", "provider", "task_status")}
        minor, currency = _money({k: row.pop(k) for k in ("amount_minor", "currency")})
        amount = {"amount_minor": minor, "currency": currency}
        listed.append(
            (Proposal(**row), {**context, **amount, "amount": format_minor(minor, currency)})
        )
    return listed
