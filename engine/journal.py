"""The audit trail and the outbox: written together, in the transition's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

Conn = AsyncConnection[dict[str, Any]]

# Both rows in one statement: one round trip per journal entry.
_AUDIT_AND_OUTBOX = """
WITH audit AS (
    INSERT INTO order_task_events
        (queue_id, task_id, from_state, to_state, event_type, payload, actor, trace_id)
    VALUES (%(queue_id)s, %(task_id)s, %(from)s, %(to)s, %(event)s, %(payload)s, %(actor)s,
            %(trace_id)s)
)
INSERT INTO outbox (subject, queue_id, task_id, payload, trace_id)
VALUES (%(subject)s, %(queue_id)s, %(task_id)s, %(body)s, %(trace_id)s)
"""


@dataclass(frozen=True)
class Entry:
    """One audit row and the outbox event that announces it."""

    subject: str
    task_id: str | None
    from_state: str | None
    to_state: str
    event_type: str
    payload: dict[str, Any]
    actor: str
    trace_id: str | None


async def journal(conn: Conn, queue: dict[str, Any], entry: Entry) -> None:
    """The audit row and its outbox event, in the caller's transaction."""
    body = {
        "order_id": queue["order_id"],
        "queue_id": str(queue["id"]),
        "task_id": entry.task_id,
        "from": entry.from_state,
        "to": entry.to_state,
        **entry.payload,
    }
    params = {
        "queue_id": queue["id"],
        "task_id": entry.task_id,
        "from": entry.from_state,
        "to": entry.to_state,
        "event": entry.event_type,
        "payload": Jsonb(entry.payload),
        "actor": entry.actor,
        "trace_id": entry.trace_id or queue.get("trace_id"),
        "subject": entry.subject,
        "body": Jsonb(body),
    }
    await conn.execute(_AUDIT_AND_OUTBOX, params)
