"""The engine: carries out a workflow's decisions, one transaction per event.

`apply()` locks the queue row, then the task row (always in that order, so two
transitions of one queue never deadlock), checks that an activity's result
is still awaited (its token), asks the definition to `decide`, and writes, in
the caller's transaction: the new state (version + 1, checked again in the
UPDATE), an audit row, an outbox row, the jobs and timers the decision asked
for, and the queue rule's outcome. The engine knows nothing about withdrawals:
it runs any WorkflowDefinition, each queue by the version it started on
(`workflow`, `workflow_version` on its row; workflows/registry.py), in the
tables its definitions name (`Storage`; engine/naming.py).
"""

from __future__ import annotations

from datetime import datetime

from engine import commit_hooks, queue_rule, tracing
from engine.contracts import (
    SYSTEM,
    Applied,
    Origin,
    QueueFinished,
    Scheduler,
    StaleEvent,
    UnknownTask,
)
from engine.journal import Conn, alert, record
from engine.naming import statement
from engine.rows import QueueRow, TaskRow, as_queue, as_task, column
from engine.transition import (
    CANCEL_REQUESTED,
    LOCK,
    OPEN_TASKS,
    QUEUE,
    QUEUE_FOR_UPDATE,
    SET_TOKEN,
    TASK_FOR_UPDATE,
    Result,
    Transition,
    next_token,
    observe_transition,
    update_query,
)
from engine.transition import (
    EngineHooks as EngineHooks,
)
from workflows.core import (
    Alert,
    Command,
    Event,
    FollowUp,
    Reconsider,
    RunActivity,
    StartTimer,
    WorkflowDefinition,
)
from workflows.registry import Definitions

MAX_FOLLOW_UPS = 8


class Engine:
    def __init__(
        self, definitions: Definitions, scheduler: Scheduler, hooks: EngineHooks | None = None
    ) -> None:
        hooks = hooks or EngineHooks()
        self.definitions = definitions
        self.storage = definitions.storage()
        self.scheduler = scheduler
        self.context_for = hooks.context_for
        self.clock = hooks.clock
        self.admission = hooks.admission
        self.listener = hooks.listener
        self.on_finish = hooks.on_finish

    async def apply(
        self,
        conn: Conn,
        task_id: str,
        event: Event,
        *,
        result_of: int | None = None,
        strict: bool = True,
        origin: Origin = SYSTEM,
    ) -> Applied:
        """Apply `event`. `result_of` is the token of the activity that produced it:
        with `strict`, the result is stale (and dropped) unless that activity is still
        the task's pending one; either way, applying it consumes the token."""
        with commit_hooks.transaction_scope(), commit_hooks.savepoint():
            async with conn.transaction():
                queue, row = await self._lock(conn, task_id)
                result = Result(result_of, strict) if result_of is not None else None
                attributes = self._span_attributes(row)
                with tracing.workflow_span(
                    f"transition {event.name}", queue["traceparent"], attributes
                ) as span:
                    applied = await self._apply_locked(
                        conn, queue, task_id, event, result, origin, 0, row
                    )
                    span.set_attribute("to_state", applied.to_status)
                    return applied

    async def apply_timer(
        self, conn: Conn, task_id: str, kind: str, due_at: datetime, *, origin: Origin
    ) -> Applied:
        """A durable timer fired: its event is the one the task's own definition
        (the version its queue started on) makes of it."""
        with commit_hooks.transaction_scope(), commit_hooks.savepoint():
            async with conn.transaction():
                queue, row = await self._lock(conn, task_id)
                event = self.definition_of(queue).timer_event(kind, due_at)
                return await self._apply_locked(conn, queue, task_id, event, None, origin, 0, row)

    def definition_of(self, queue: QueueRow) -> WorkflowDefinition:
        return self.definitions.get(queue["workflow"], queue["workflow_version"])

    async def cancel_queue(self, conn: Conn, queue_id: str, origin: Origin, reason: str) -> None:
        """Request cancellation of a whole queue: each open task gets a Cancel event."""
        with commit_hooks.transaction_scope(), commit_hooks.savepoint():
            await self._cancel_queue(conn, queue_id, origin, reason)

    async def _cancel_queue(self, conn: Conn, queue_id: str, origin: Origin, reason: str) -> None:
        async with conn.transaction():
            cur = await conn.execute(self._sql(QUEUE_FOR_UPDATE), (queue_id,))
            found = await cur.fetchone()
            if found is None:
                raise UnknownTask(queue_id)
            queue = as_queue(found)
            if queue["status"] != "ACTIVE":
                raise QueueFinished(f"queue {queue_id} is already {queue['status']}")
            await conn.execute(self._sql(CANCEL_REQUESTED), (queue_id,))
            definition = self.definition_of(queue)
            terminal = sorted(definition.terminal_statuses)
            rows = await (
                await conn.execute(self._sql(OPEN_TASKS), (queue_id, terminal))
            ).fetchall()
            event = definition.cancel_event(origin.actor, reason)
            for row in rows:  # depth 1: the queue rule runs once, below, not per task
                await self._apply_locked(conn, queue, str(row["id"]), event, None, origin, 1)
            await self._run_queue_rule(conn, {**queue, "cancel_requested": True}, origin)

    async def activate(self, conn: Conn, queue_id: str, origin: Origin) -> None:
        """Run the queue rule for a queue inserted in this transaction (starts its first
        task); no other transaction can see it yet, so it needs no lock."""
        queue = await (await conn.execute(self._sql(QUEUE), (queue_id,))).fetchone()
        if queue is None:
            raise UnknownTask(queue_id)
        await self._run_queue_rule(conn, as_queue(queue), origin)

    # -- internals -------------------------------------------------------------------
    def _sql(self, template: str) -> str:
        return statement(template, self.storage)

    async def _lock(self, conn: Conn, task_id: str) -> tuple[QueueRow, TaskRow]:
        """The queue row, then the task row, locked in that order in one statement
        (the queue as JSON: both rows have an `id`). Every writer of a queue locks
        it first, so two transitions of one queue's tasks never deadlock."""
        cur = await conn.execute(self._sql(LOCK), (task_id,))
        row = await cur.fetchone()
        if row is None:
            raise UnknownTask(task_id)
        return row.pop("queue_row"), as_task(row)

    async def _lock_task(self, conn: Conn, task_id: str) -> TaskRow:
        row = await (await conn.execute(self._sql(TASK_FOR_UPDATE), (task_id,))).fetchone()
        if row is None:
            raise UnknownTask(task_id)
        return as_task(row)

    async def _apply_locked(
        self,
        conn: Conn,
        queue: QueueRow,
        task_id: str,
        event: Event,
        result: Result | None,
        origin: Origin,
        depth: int,
        row: TaskRow | None = None,
    ) -> Applied:
        """`row`: the task row, when the caller has just locked it."""
        row = row if row is not None else await self._lock_task(conn, task_id)
        pending = row["activity_token"]
        if result is not None and result.strict and pending != result.token:
            raise StaleEvent(f"task {task_id} no longer awaits activity #{result.token}")
        definition = self.definition_of(queue)
        state = definition.load(row, self.context_for(row))
        new_state, commands = definition.decide(state, event, self.clock())
        moved = Transition(row, definition.status_of(state), definition.status_of(new_state))
        consumed = result is not None and pending == result.token
        token, activity = next_token(row, commands, consumed, changed=new_state != state)
        if new_state != state:
            values = {**definition.dump(new_state), "activity_token": token, "activity": activity}
            await self._write_state(conn, moved, values)
            await self._journal(conn, queue, moved, event, origin)
        elif token != pending:
            moved.values = {"activity_token": token, "activity": activity}
            await conn.execute(self._sql(SET_TOKEN), (token, activity, task_id))
        if token != pending:
            self.scheduler.token_written(task_id, token)
        return await self._carry_out(conn, queue, commands, moved, origin, depth)

    async def _write_state(self, conn: Conn, moved: Transition, values: dict[str, object]) -> None:
        row = moved.row
        query = update_query(self.storage.tasks, tuple(values))
        cur = await conn.execute(query, {**values, "id": row["id"], "version": row["version"]})
        updated = await cur.fetchone()
        if updated is None:  # cannot happen under FOR UPDATE; the check is the contract
            raise StaleEvent(f"task {row['id']} changed under its lock")
        moved.changed, moved.values, moved.version = True, values, int(updated["version"])

    async def _journal(
        self, conn: Conn, queue: QueueRow, moved: Transition, event: Event, origin: Origin
    ) -> None:
        """The audit and outbox rows, the metrics (on commit) and the shell's listener."""
        row, change = moved.row, (moved.from_status, moved.to_status)
        await record(
            conn, self.storage, queue, moved.task_id, *change, event, origin, moved.version
        )
        observe_transition(*change, row["updated_at"], self.clock())
        if self.listener is not None:
            await self.listener(conn, queue, moved.task_row(), event, *change)

    async def _carry_out(
        self,
        conn: Conn,
        queue: QueueRow,
        commands: list[Command],
        moved: Transition,
        origin: Origin,
        depth: int,
    ) -> Applied:
        """The decision's commands, in order; then, at the top of a chain of follow-ups,
        the queue rule if the status moved (or a command asked for it)."""
        alerts: list[str] = []
        for command in commands:
            if isinstance(command, FollowUp):
                if depth >= MAX_FOLLOW_UPS:
                    raise RuntimeError("follow-up chain too long")
                event = command.event
                followed = await self._apply_locked(
                    conn, queue, moved.task_id, event, None, origin, depth + 1
                )
                moved.version, moved.to_status = followed.version, followed.to_status
                alerts += followed.alerts
            else:
                alerts += await self._command(conn, queue, command, moved, origin)
        reconsider = any(isinstance(c, Reconsider) for c in commands)
        if depth == 0 and (moved.from_status != moved.to_status or reconsider):
            await self._run_queue_rule(conn, queue, origin)
        return moved.applied(tuple(alerts))

    async def _command(
        self, conn: Conn, queue: QueueRow, command: Command, moved: Transition, origin: Origin
    ) -> list[str]:
        """One command other than a follow-up; returns the alert it raised, if any."""
        task_id = moved.task_id
        if isinstance(command, RunActivity):
            # No handler asks for an activity and a follow-up at once; the token
            # written is this activity's. The rows as this transition leaves
            # them let the activity run without reading them again.
            rows = (moved.task_row(), queue)
            await self.scheduler.defer_activity(
                conn, task_id, command.activity, moved.version, rows=rows
            )
        elif isinstance(command, StartTimer):
            await self.scheduler.defer_timer(conn, task_id, command.kind, command.due_at)
        elif isinstance(command, Alert):
            await alert(conn, self.storage, queue, task_id, moved.to_status, command, origin)
            return [command.kind]
        return []

    async def _run_queue_rule(self, conn: Conn, queue: QueueRow, origin: Origin) -> None:
        await queue_rule.run(self, conn, queue, origin)

    async def apply_to_locked_queue(
        self, conn: Conn, queue: QueueRow, task_id: str, event: Event, origin: Origin
    ) -> Applied:
        """An event the queue rule sends one of its tasks (the queue is locked)."""
        return await self._apply_locked(conn, queue, task_id, event, None, origin, 1)

    def _span_attributes(self, row: TaskRow) -> dict[str, object]:
        """Ids and states only (and the columns the storage names): never amounts,
        account data or secrets."""
        extra = {c: column(row, c) for c in self.storage.span_columns}
        return {
            "queue_id": row["queue_id"],
            "task_id": row["id"],
            **extra,
            "from_state": row["status"],
        }
