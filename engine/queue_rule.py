"""The queue rule, carried out: after a task's status changes (or a held task comes
due), the definition decides what the queue does next, in the same transaction.

A routed definition (provider health and limits) is asked twice only when it
would start a task: first plainly, then with the shell's verdicts, so that a
slot is reserved only for a task that starts (engine/contracts.py, Admission).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import commit_hooks, metrics
from engine.contracts import Origin
from engine.journal import Conn, QueueEvent, record
from workflows.core import QueueDecision, TaskView

if TYPE_CHECKING:
    from engine.engine import Engine

_TASKS = "SELECT * FROM order_tasks WHERE queue_id = %s ORDER BY position"


async def run(engine: Engine, conn: Conn, queue: dict[str, Any], origin: Origin) -> None:
    """`queue`: its row, locked (or inserted) by this transaction."""
    queue_id = str(queue["id"])
    rows = await (await conn.execute(_TASKS, (queue_id,))).fetchall()
    definition = engine.definition_of(queue)
    views = [_view(r) for r in rows]
    status, cancel = str(queue["status"]), queue["cancel_requested"]
    decision = definition.queue_decide(status, cancel, views)
    if decision.start and definition.routed and engine.admission is not None:
        pending = [r for r in rows if str(r["status"]) == "PENDING"]
        routing = await engine.admission(conn, queue, pending)
        decision = definition.queue_decide(status, cancel, views, routing)
    await _carry_out(engine, conn, queue, decision, origin)


def _view(row: dict[str, Any]) -> TaskView:
    unstarted = str(row["status"]) == "PENDING"
    return TaskView(
        str(row["id"]),
        row["position"],
        str(row["status"]),
        settling=unstarted and row.get("target") is not None,
        resumed=unstarted and bool(row.get("order_submitted")),
    )


async def _carry_out(
    engine: Engine, conn: Conn, queue: dict[str, Any], decision: QueueDecision, origin: Origin
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


async def _finish(
    engine: Engine, conn: Conn, queue: dict[str, Any], status: str, origin: Origin
) -> None:
    queue_id = str(queue["id"])
    commit_hooks.on_commit(lambda: metrics.WITHDRAWAL_OUTCOMES.labels(status).inc())
    await conn.execute(
        "UPDATE order_queues SET status = %s, updated_at = now(), finished_at = now()"
        " WHERE id = %s",
        (status, queue_id),
    )
    await engine.scheduler.defer_notification(conn, queue_id)  # reads the final row
    await record(conn, queue, None, str(queue["status"]), status, QueueEvent(status), origin, None)
