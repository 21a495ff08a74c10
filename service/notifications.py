"""The withdrawal's final outcome, told to cascade-core once it is final.

The engine's OutcomeNotice (engine/contracts.py): what is told is read in the
finishing transaction, sent after it commits (or by a retried `notify` job),
then noted on the queue row (`core_notified_at`); the sweep asks for the final
withdrawals never noted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from engine.journal import Conn
from engine.rows import JsonObject

Send = Callable[[JsonObject, dict[str, str]], Awaitable[None]]

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
# Final withdrawals whose outcome cascade-core was never told (the process that
# finished them died before it could, and no job holds the notification).
_UNTOLD = """
SELECT q.id::text AS queue_id FROM order_queues q
WHERE q.status <> 'ACTIVE' AND q.core_notified_at IS NULL
  AND q.finished_at < now() - make_interval(secs => %s)
  AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.task_name = 'notify'
                   AND j.status IN ('todo', 'doing') AND j.args->>'queue_id' = q.id::text)
ORDER BY q.finished_at
LIMIT %s
"""


class CoreOutcomes:
    """cascade-core's outcome callback (activities/notifier.py sends it)."""

    def __init__(self, send: Send) -> None:
        self._send = send

    async def read(self, conn: Conn, queue_id: str) -> JsonObject | None:
        """What cascade-core is told; inside the finishing transaction, as it will commit."""
        return await (await conn.execute(_OUTCOME, (queue_id,))).fetchone()

    async def send(self, outcome: JsonObject, headers: dict[str, str]) -> None:
        await self._send(outcome, headers)

    async def mark_sent(self, conn: Conn, queue_id: str) -> None:
        await conn.execute(_DELIVERED, (queue_id,))

    async def untold(self, conn: Conn, grace_s: float, limit: int) -> list[str]:
        rows = await (await conn.execute(_UNTOLD, (grace_s, limit))).fetchall()
        return [str(row["queue_id"]) for row in rows]
