"""The audit trail and the outbox: written together, in the transition's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

Conn = AsyncConnection[dict[str, Any]]

_AUDIT = (
    "INSERT INTO order_task_events"
    " (queue_id, task_id, from_state, to_state, event_type, payload, actor, trace_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_OUTBOX = (
    "INSERT INTO outbox (subject, queue_id, task_id, payload, trace_id) VALUES (%s, %s, %s, %s, %s)"
)


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
    trace_id = entry.trace_id or queue.get("trace_id")
    await conn.execute(
        _AUDIT,
        (
            queue["id"],
            entry.task_id,
            entry.from_state,
            entry.to_state,
            entry.event_type,
            Jsonb(entry.payload),
            entry.actor,
            trace_id,
        ),
    )
    body = {
        "order_id": queue["order_id"],
        "queue_id": str(queue["id"]),
        "task_id": entry.task_id,
        "from": entry.from_state,
        "to": entry.to_state,
        **entry.payload,
    }
    await conn.execute(_OUTBOX, (entry.subject, queue["id"], entry.task_id, Jsonb(body), trace_id))
