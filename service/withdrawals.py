"""Submitting withdrawals and reading them back (SQL over psycopg, no ORM)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from engine import commit_hooks
from engine.contracts import Origin
from engine.engine import Engine
from engine.journal import Conn
from service.models import BadRequest, WithdrawalRequest
from service.rollout import EVERYONE_ON_CASCADE, Decision, RolloutGate
from workflows import identity
from workflows.core import WorkflowDefinition
from workflows.money import format_minor

_INSERT_QUEUE = """
INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor, currency,
                          trace_id, policy, policy_reason, requested_cascade,
                          workflow, workflow_version, traceparent,
                          cohort, rollout_version, providers_version)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (order_id) DO NOTHING
RETURNING id
"""
WORKFLOW = "withdrawal"
_INSERT_TASK = """
INSERT INTO order_tasks (id, queue_id, position, provider, providers_version)
VALUES (%s, %s, %s, %s, %s)
"""


@dataclass(frozen=True)
class Rollout:
    """What a new withdrawal is decided with, read once from the live configuration
    (service/live_config.py): the gate in force and the providers version it keeps."""

    gate: RolloutGate = EVERYONE_ON_CASCADE
    providers_version: int | None = None


EVERYONE_ON_CASCADE_NOW = Rollout()


async def submit(
    conn: Conn,
    engine: Engine,
    request: WithdrawalRequest,
    trace_id: str | None,
    rollout: Rollout = EVERYONE_ON_CASCADE_NOW,
    traceparent: str | None = None,
) -> tuple[str, bool]:
    """Create the withdrawal (or find its identical twin). Returns (queue id, created).
    `traceparent`: the submission's span, parent of the withdrawal's other spans."""
    with commit_hooks.transaction_scope():
        async with conn.transaction():
            return await _submit(conn, engine, request, trace_id, rollout, traceparent)


async def submit_and_view(
    conn: Conn,
    engine: Engine,
    request: WithdrawalRequest,
    trace_id: str | None,
    rollout: Rollout = EVERYONE_ON_CASCADE_NOW,
    traceparent: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """`submit`, and the withdrawal as the API answers it (`withdrawal_view`), read in
    the same transaction: as it was committed, and one commit where reading it after
    took two more (issue 24: two of the 12 a withdrawal cost)."""
    with commit_hooks.transaction_scope():
        async with conn.transaction():
            queue_id, created = await _submit(conn, engine, request, trace_id, rollout, traceparent)
            return await withdrawal_view(conn, queue_id), created


async def _submit(
    conn: Conn,
    engine: Engine,
    request: WithdrawalRequest,
    trace_id: str | None,
    rollout: Rollout,
    traceparent: str | None,
) -> tuple[str, bool]:
    """The submission's rows, in the caller's transaction."""
    decision = rollout.gate.decide(request.merchant_id, request.order_id)
    # Single-shot is the old path: one attempt, at the cheapest provider.
    cascade = request.cascade if decision.policy.cascades else request.cascade[:1]
    fingerprint = request.fingerprint()
    # Derived, not random: a resubmission after a failover that lost this commit
    # gets the same ids, so the ledger and the provider see a replay (identity.py).
    queue_id = identity.withdrawal_id(request.order_id)
    # It starts on the current version of the machine and keeps it to the end.
    definition = engine.definitions.current(WORKFLOW)
    inserted = await _insert_queue(
        conn,
        queue_id,
        request,
        fingerprint,
        trace_id,
        (rollout, decision),
        definition,
        traceparent,
    )
    if not inserted:
        return await _existing(conn, request.order_id, fingerprint), False
    for position, provider in enumerate(cascade):
        task_id = identity.task_id(request.order_id, position, provider)
        await conn.execute(
            _INSERT_TASK, (task_id, queue_id, position, provider, rollout.providers_version)
        )
    await engine.activate(conn, queue_id, Origin(actor="cascade-core", trace_id=trace_id))
    return queue_id, True


async def _insert_queue(
    conn: Conn,
    queue_id: str,
    request: WithdrawalRequest,
    fingerprint: str,
    trace_id: str | None,
    decided: tuple[Rollout, Decision],
    definition: WorkflowDefinition,
    traceparent: str | None,
) -> bool:
    """Inserts the withdrawal's row; False when its order_id is already taken."""
    rollout, decision = decided
    cur = await conn.execute(
        _INSERT_QUEUE,
        (
            queue_id,
            request.order_id,
            fingerprint,
            request.merchant_id,
            request.amount_minor,
            request.currency,
            trace_id,
            decision.policy,
            decision.reason,
            request.cascade,
            definition.name,
            definition.version,
            traceparent,
            decision.cohort,
            rollout.gate.version,
            rollout.providers_version,
        ),
    )
    return await cur.fetchone() is not None


async def _existing(conn: Conn, order_id: str, fingerprint: str) -> str:
    cur = await conn.execute(
        "SELECT id, request_hash FROM order_queues WHERE order_id = %s", (order_id,)
    )
    row = await cur.fetchone()
    assert row is not None  # ON CONFLICT saw it, and rows are never deleted
    if row["request_hash"] != fingerprint:
        raise BadRequest(
            409, "order_id_conflict", "order_id was already used with a different request"
        )
    return str(row["id"])


async def find_queue(conn: Conn, ident: str) -> dict[str, str | None] | None:
    """Accept our queue id or cascade-core's order_id; returns the withdrawal's ids."""
    try:
        as_uuid: str | None = str(uuid.UUID(ident))
    except ValueError:
        as_uuid = None
    cur = await conn.execute(
        "SELECT id::text AS queue_id, order_id, trace_id, merchant_id FROM order_queues"
        " WHERE id = %s OR order_id = %s",
        (as_uuid, ident),
    )
    return await cur.fetchone()


async def find_queue_id(conn: Conn, ident: str) -> str | None:
    found = await find_queue(conn, ident)
    return found["queue_id"] if found else None


async def withdrawal_view(conn: Conn, queue_id: str) -> dict[str, Any]:
    queue = await (
        await conn.execute("SELECT * FROM order_queues WHERE id = %s", (queue_id,))
    ).fetchone()
    assert queue is not None
    tasks = await (
        await conn.execute(
            "SELECT id, position, provider, status::text, funds::text, target::text, version,"
            " provider_ref, cancel_requested, recheck_attempts, webhook_deadline, last_reason,"
            " updated_at FROM order_tasks WHERE queue_id = %s ORDER BY position",
            (queue_id,),
        )
    ).fetchall()
    return {
        "id": str(queue["id"]),
        "order_id": queue["order_id"],
        "merchant_id": queue["merchant_id"],
        "amount": format_minor(queue["amount_minor"], queue["currency"].strip()),
        "currency": queue["currency"].strip(),
        "status": queue["status"],
        "cancel_requested": queue["cancel_requested"],
        "policy": queue["policy"],
        "policy_reason": queue["policy_reason"],
        "requested_cascade": queue["requested_cascade"],
        "created_at": queue["created_at"].isoformat(),
        "finished_at": queue["finished_at"].isoformat() if queue["finished_at"] else None,
        "tasks": [_task_view(t) for t in tasks],
    }


def _task_view(task: dict[str, Any]) -> dict[str, Any]:
    return {
        key: (value.isoformat() if hasattr(value, "isoformat") else value)
        for key, value in {**task, "id": str(task["id"])}.items()
    }


# A withdrawal's audit rows: in its month's partition, or the first one's rows from
# before partitioning ('-infinity', migration 0013). Said, so that PostgreSQL probes
# those two partitions rather than every month's index.
_EVENTS = """
SELECT id, task_id, from_state, to_state, event_type, payload, actor, trace_id, occurred_at
FROM order_task_events
WHERE queue_id = %(id)s
  AND queue_created_at = ANY(ARRAY[(SELECT created_at FROM order_queues WHERE id = %(id)s),
                                   '-infinity'])
ORDER BY id
"""


async def events_view(conn: Conn, queue_id: str) -> list[dict[str, Any]]:
    rows = await (await conn.execute(_EVENTS, {"id": queue_id})).fetchall()
    return [
        {
            **r,
            "task_id": str(r["task_id"]) if r["task_id"] else None,
            "occurred_at": r["occurred_at"].isoformat(),
        }
        for r in rows
    ]
