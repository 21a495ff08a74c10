"""The queue rule, carried out: after a task's status changes (or a held task comes
due), the definition decides what the queue does next, in the same transaction.

A routed definition (provider health and limits) is asked twice only when it
would start a task: first plainly, then with the shell's verdicts, so that a
slot is reserved only for a task that starts (engine/contracts.py, Admission).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.contracts import Origin
from engine.journal import Conn, QueueEvent, record
from engine.naming import statement
from engine.rows import QueueRow, as_task
from workflows.core import QueueDecision

if TYPE_CHECKING:
    from engine.engine import Engine

_TASKS = "SELECT * FROM {tasks} WHERE queue_id = %s ORDER BY position"
_FINISH = "UPDATE {queues} SET status = %s, updated_at = now(), finished_at = now() WHERE id = %s"


async def run(engine: Engine, conn: Conn, queue: QueueRow, origin: Origin) -> None:
    """`queue`: its row, locked (or inserted) by this transaction."""
    queue_id = str(queue["id"])
    rows = await (await conn.execute(statement(_TASKS, engine.storage), (queue_id,))).fetchall()
    definition = engine.definition_of(queue)
    views = [definition.task_view(r) for r in rows]
    status, cancel = str(queue["status"]), queue["cancel_requested"]
    decision = definition.queue_decide(status, cancel, views)
    if decision.start and definition.routed and engine.admission is not None:
        by_id = {str(r["id"]): r for r in rows}
        pending = [as_task(by_id[task_id]) for task_id in definition.try_order(views)]
        routing = await engine.admission(conn, queue, pending)
        decision = definition.queue_decide(status, cancel, views, routing)
    await _carry_out(engine, conn, queue, decision, origin)


async def _carry_out(
    engine: Engine, conn: Conn, queue: QueueRow, decision: QueueDecision, origin: Origin
) -> None:
    definition = engine.definition_of(queue)
    apply = engine.apply_to_locked_queue
    for task_id in decision.stop:
        await apply(conn, queue, task_id, definition.stop_event(), origin)
    for task_id, reason in decision.skip:
        await apply(conn, queue, task_id, definition.skip_event(reason), origin)
    if decision.hold is not None:
        hold = decision.hold
        await apply(
            conn, queue, hold.task_id, definition.hold_event(hold.until, hold.reason), origin
        )
    if decision.status is not None:
        await _finish(engine, conn, queue, decision.status, origin)
    for task_id in decision.start:
        await apply(conn, queue, task_id, definition.start_event(), origin)


async def _finish(engine: Engine, conn: Conn, queue: QueueRow, status: str, origin: Origin) -> None:
    """The queue's final status; the shell hears of it (in this transaction), and
    its outcome is told once it commits (the notification; engine/scheduler.py)."""
    queue_id = str(queue["id"])
    await conn.execute(statement(_FINISH, engine.storage), (status, queue_id))
    if engine.on_finish is not None:
        await engine.on_finish(conn, queue, status)
    await engine.scheduler.defer_notification(conn, queue_id)  # reads the final row
    event = QueueEvent(status)
    await record(
        conn, engine.storage, queue, None, str(queue["status"]), status, event, origin, None
    )
