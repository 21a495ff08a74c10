"""The withdrawal's final outcome, told to cascade-core once it is final."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from engine.journal import Conn

Notify = Callable[[dict[str, Any], dict[str, str]], Awaitable[None]]

_OUTCOME = """
SELECT q.id::text AS withdrawal_id, q.order_id, q.merchant_id, q.status::text AS status,
       q.amount_minor, q.currency, q.finished_at, q.trace_id,
       t.provider, t.provider_ref
FROM order_queues q LEFT JOIN order_tasks t ON t.queue_id = q.id AND t.status = 'SUCCEEDED'
WHERE q.id = %s
"""
_DELIVERED = (
    "UPDATE order_queues SET core_notified_at = now() WHERE id = %s AND core_notified_at IS NULL"
)


async def outcome_of(conn: Conn, queue_id: str) -> dict[str, Any] | None:
    """What cascade-core is told; inside the finishing transaction, as it will commit."""
    return await (await conn.execute(_OUTCOME, (queue_id,))).fetchone()


async def mark_delivered(conn: Conn, queue_id: str) -> None:
    await conn.execute(_DELIVERED, (queue_id,))
