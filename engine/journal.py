"""The audit trail and the outbox: written together, in the transition's transaction.

`record` journals a transition, `alert` an attention event (and flags the queue)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, cast

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from engine import commit_hooks, metrics
from engine.naming import statement
from engine.rows import DbRow, JsonObject, QueueRow
from workflows.core import Alert, Event, Storage

if TYPE_CHECKING:  # contracts imports Conn from here
    from engine.contracts import Origin

Conn = AsyncConnection[DbRow]

# Both rows in one statement: one round trip per journal entry.
_AUDIT_AND_OUTBOX = """
WITH audit AS (
    INSERT INTO {audit}
        (queue_id, task_id, from_state, to_state, event_type, payload, actor, trace_id)
    VALUES (%(queue_id)s, %(task_id)s, %(from)s, %(to)s, %(event)s, %(payload)s, %(actor)s,
            %(trace_id)s)
)
INSERT INTO outbox (subject, queue_id, task_id, payload, trace_id)
VALUES (%(subject)s, %(queue_id)s, %(task_id)s, %(body)s, %(trace_id)s)
"""
# The same, for an audit table partitioned by its queue's submission: the key is read
# from the queue row, which the transition has locked (no other writer can be changing
# it; created_at never changes anyway), so the index lookup is all it costs.
_KEYED_AUDIT_AND_OUTBOX = """
WITH audit AS (
    INSERT INTO {audit}
        (queue_id, task_id, from_state, to_state, event_type, payload, actor, trace_id,
         {audit_partition_key})
    VALUES (%(queue_id)s, %(task_id)s, %(from)s, %(to)s, %(event)s, %(payload)s, %(actor)s,
            %(trace_id)s, (SELECT created_at FROM {queues} WHERE id = %(queue_id)s))
)
INSERT INTO outbox (subject, queue_id, task_id, payload, trace_id)
VALUES (%(subject)s, %(queue_id)s, %(task_id)s, %(body)s, %(trace_id)s)
"""


@dataclass(frozen=True)
class Entry:
    """One audit row and the outbox event that announces it."""

    subject: str  # after the storage's prefix: "task.executing", "queue.completed", ...
    task_id: str | None
    from_state: str | None
    to_state: str
    event_type: str
    payload: JsonObject
    actor: str
    trace_id: str | None


async def journal(conn: Conn, storage: Storage, queue: QueueRow, entry: Entry) -> None:
    """The audit row and its outbox event, in the caller's transaction."""
    body = {
        storage.key: cast(DbRow, queue)[storage.key],
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
        "trace_id": entry.trace_id or queue["trace_id"],
        "subject": f"{storage.subject_prefix}.{entry.subject}",
        "body": Jsonb(body),
    }
    keyed = storage.audit_partition_key is not None
    template = _KEYED_AUDIT_AND_OUTBOX if keyed else _AUDIT_AND_OUTBOX
    await conn.execute(statement(template, storage), params)


def event_payload(event: Event) -> JsonObject:
    return json.loads(json.dumps(asdict(event), default=str))  # type: ignore[no-any-return]


async def record(
    conn: Conn,
    storage: Storage,
    queue: QueueRow,
    task_id: str | None,
    from_status: str | None,
    to_status: str,
    event: Event,
    origin: Origin,
    version: int | None,
) -> None:
    scope = "task" if task_id else "queue"
    payload = {"event": event.name, "version": version, **event_payload(event)}
    subject = f"{scope}.{to_status.lower()}"
    await journal(
        conn,
        storage,
        queue,
        Entry(
            subject,
            task_id,
            from_status,
            to_status,
            event.name,
            payload,
            origin.actor,
            origin.trace_id,
        ),
    )


async def alert(
    conn: Conn,
    storage: Storage,
    queue: QueueRow,
    task_id: str,
    status: str,
    raised: Alert,
    origin: Origin,
) -> None:
    payload = {"kind": raised.kind, "detail": raised.detail}
    commit_hooks.on_commit(lambda: metrics.ALERTS.labels(raised.kind).inc())
    await flag(conn, storage, queue["id"], f"{raised.kind}: {raised.detail}")
    subject = f"task.{raised.kind.replace('_', '.')}"
    await journal(
        conn,
        storage,
        queue,
        Entry(
            subject, task_id, status, status, raised.kind, payload, origin.actor, origin.trace_id
        ),
    )


_FLAG = (
    "UPDATE {queues} SET needs_attention = true, attention_reason = %s, updated_at = now()"
    " WHERE id = %s"
)


async def flag(conn: Conn, storage: Storage, queue_id: object, reason: str) -> None:
    """Show the queue to a person (the attention list), with why."""
    await conn.execute(statement(_FLAG, storage), (reason, queue_id))


@dataclass(frozen=True)
class QueueEvent(Event):
    """The queue's own transition (to COMPLETED, FAILED or CANCELLED), as audited."""

    outcome: str

    @property
    def name(self) -> str:
        return f"queue_{self.outcome.lower()}"
