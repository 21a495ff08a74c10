"""The engine: carries out a workflow's decisions, one transaction per event.

`apply()` locks the queue row, then the task row (always in that order, so two
transitions of one withdrawal never deadlock), checks that an activity's result
is still awaited (its token), asks the definition to `decide`, and writes, in
the caller's transaction: the new state (version + 1, checked again in the
UPDATE), an audit row, an outbox row, the jobs and timers the decision asked
for, and the queue rule's outcome. The engine knows nothing about withdrawals:
it runs any WorkflowDefinition, each queue by the version it started on
(`workflow`, `workflow_version` on its row; workflows/registry.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine import commit_hooks, metrics, queue_rule, tracing
from engine.contracts import (
    SYSTEM,
    Admission,
    Applied,
    Origin,
    QueueFinished,
    Scheduler,
    StaleEvent,
    TransitionListener,
    UnknownTask,
)
from engine.journal import Conn, alert, record
from workflows.core import (
    Alert,
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
        self,
        definitions: Definitions,
        scheduler: Scheduler,
        context_for: Callable[[dict[str, Any]], Any],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        admission: Admission | None = None,
        listener: TransitionListener | None = None,
    ) -> None:
        self.definitions = definitions
        self.scheduler = scheduler
        self.context_for = context_for  # task row -> decide() context (e.g. provider timing)
        self.clock = clock
        self.admission = admission  # None: routed definitions start the cheapest, as v1
        self.listener = listener

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
                result = _Result(result_of, strict) if result_of is not None else None
                with tracing.withdrawal_span(
                    f"transition {event.name}", queue.get("traceparent"), _span_attributes(row)
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

    def definition_of(self, queue: dict[str, Any]) -> WorkflowDefinition:
        return self.definitions.get(queue["workflow"], queue["workflow_version"])

    async def cancel_queue(self, conn: Conn, queue_id: str, origin: Origin, reason: str) -> None:
        """Request cancellation of a whole queue: each open task gets a Cancel event."""
        with commit_hooks.transaction_scope(), commit_hooks.savepoint():
            await self._cancel_queue(conn, queue_id, origin, reason)

    async def _cancel_queue(self, conn: Conn, queue_id: str, origin: Origin, reason: str) -> None:
        async with conn.transaction():
            cur = await conn.execute(
                "SELECT * FROM order_queues WHERE id = %s FOR UPDATE", (queue_id,)
            )
            queue = await cur.fetchone()
            if queue is None:
                raise UnknownTask(queue_id)
            if queue["status"] != "ACTIVE":
                raise QueueFinished(f"queue {queue_id} is already {queue['status']}")
            await conn.execute(
                "UPDATE order_queues SET cancel_requested = true, updated_at = now() WHERE id = %s",
                (queue_id,),
            )
            rows = await (
                await conn.execute(
                    "SELECT id FROM order_tasks WHERE queue_id = %s AND status::text <> ALL(%s)"
                    " ORDER BY position FOR UPDATE",
                    (queue_id, sorted(self.definition_of(queue).terminal_statuses)),
                )
            ).fetchall()
            event = self.definition_of(queue).cancel_event(origin.actor, reason)
            for row in rows:  # depth 1: the queue rule runs once, below, not per task
                await self._apply_locked(conn, queue, str(row["id"]), event, None, origin, 1)
            await self._run_queue_rule(conn, {**queue, "cancel_requested": True}, origin)

    async def activate(self, conn: Conn, queue_id: str, origin: Origin) -> None:
        """Run the queue rule for a queue inserted in this transaction (starts its first
        task); no other transaction can see it yet, so it needs no lock."""
        cur = await conn.execute("SELECT * FROM order_queues WHERE id = %s", (queue_id,))
        queue = await cur.fetchone()
        if queue is None:
            raise UnknownTask(queue_id)
        await self._run_queue_rule(conn, queue, origin)

    # -- internals -------------------------------------------------------------------
    async def _lock(self, conn: Conn, task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The queue row, then the task row, locked in that order in one statement
        (the queue as JSON: both rows have an `id`). Every writer of a withdrawal
        locks its queue first, so two transitions of one withdrawal never deadlock."""
        cur = await conn.execute(_LOCK, (task_id,))
        row = await cur.fetchone()
        if row is None:
            raise UnknownTask(task_id)
        return row.pop("queue_row"), row

    async def _apply_locked(
        self,
        conn: Conn,
        queue: dict[str, Any],
        task_id: str,
        event: Event,
        result: _Result | None,
        origin: Origin,
        depth: int,
        row: dict[str, Any] | None = None,
    ) -> Applied:
        """`row`: the task row, when the caller has just locked it."""
        if row is None:
            cur = await conn.execute(
                "SELECT * FROM order_tasks WHERE id = %s FOR UPDATE", (task_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise UnknownTask(task_id)
        pending = row["activity_token"]
        if result is not None and result.strict and pending != result.token:
            raise StaleEvent(f"task {task_id} no longer awaits activity #{result.token}")
        definition = self.definition_of(queue)
        state = definition.load(row, self.context_for(row))
        new_state, commands = definition.decide(state, event, self.clock())
        from_status, to_status = definition.status_of(state), definition.status_of(new_state)
        version = row["version"]
        changed = new_state != state
        # The token names the one activity whose result the task now awaits: a new
        # activity's (its version), none once its result is applied, else unchanged
        # (a cancel request or a pending status does not supersede it). It is written
        # with the state, in the same UPDATE.
        issued = next((c.activity for c in commands if isinstance(c, RunActivity)), None)
        consumed = result is not None and pending == result.token
        kept = (None, None) if consumed else (pending, row["activity"])
        values: dict[str, Any] = {}
        if changed:
            token, activity = (version + 1, issued) if issued else kept
            values = {**definition.dump(new_state), "activity_token": token, "activity": activity}
            version = await self._write_state(conn, row, values)
            await record(conn, queue, task_id, from_status, to_status, event, origin, version)
            _observe_transition(from_status, to_status, row["updated_at"], self.clock())
            if self.listener is not None:
                task = {**row, **values, "version": version}
                await self.listener(conn, queue, task, event, from_status, to_status)
        elif (token := version if issued else kept[0]) != pending:
            activity = issued if issued else kept[1]
            values = {"activity_token": token, "activity": activity}
            await conn.execute(
                "UPDATE order_tasks SET activity_token = %s, activity = %s WHERE id = %s",
                (token, activity, task_id),
            )
        if token != pending:
            self.scheduler.token_written(task_id, token)
        alerts: list[str] = []
        reconsider = False
        for command in commands:
            if isinstance(command, FollowUp):
                if depth >= MAX_FOLLOW_UPS:
                    raise RuntimeError("follow-up chain too long")
                followed = await self._apply_locked(
                    conn, queue, task_id, command.event, None, origin, depth + 1
                )
                version, to_status = followed.version, followed.to_status
                alerts += followed.alerts
            elif isinstance(command, RunActivity):
                # No handler asks for an activity and a follow-up at once; the token
                # written above is this activity's. The rows as this transition
                # leaves them let the activity run without reading them again.
                task_row = {**row, **values, "version": version}
                await self.scheduler.defer_activity(
                    conn, task_id, command.activity, version, rows=(task_row, queue)
                )
            elif isinstance(command, StartTimer):
                await self.scheduler.defer_timer(conn, task_id, command.kind, command.due_at)
            elif isinstance(command, Alert):
                await alert(conn, queue, task_id, to_status, command, origin)
                alerts.append(command.kind)
            elif isinstance(command, Reconsider):
                reconsider = True
        if depth == 0 and (from_status != to_status or reconsider):
            await self._run_queue_rule(conn, queue, origin)
        return Applied(task_id, from_status, to_status, version, changed, tuple(alerts))

    async def _write_state(self, conn: Conn, row: dict[str, Any], values: dict[str, Any]) -> int:
        query = _update_query(tuple(values))
        cur = await conn.execute(query, {**values, "id": row["id"], "version": row["version"]})
        updated = await cur.fetchone()
        if updated is None:  # cannot happen under FOR UPDATE; the check is the contract
            raise StaleEvent(f"task {row['id']} changed under its lock")
        return int(updated["version"])

    async def _run_queue_rule(self, conn: Conn, queue: dict[str, Any], origin: Origin) -> None:
        await queue_rule.run(self, conn, queue, origin)

    async def apply_to_locked_queue(
        self, conn: Conn, queue: dict[str, Any], task_id: str, event: Event, origin: Origin
    ) -> Applied:
        """An event the queue rule sends one of its tasks (the queue is locked)."""
        return await self._apply_locked(conn, queue, task_id, event, None, origin, 1)


_LOCK = """
SELECT to_jsonb(q) AS queue_row, t.*
FROM order_queues q JOIN order_tasks t ON t.queue_id = q.id
WHERE t.id = %s
FOR UPDATE OF q, t
"""


@functools.cache
def _update_query(columns: tuple[str, ...]) -> str:
    """The state UPDATE for these columns (the definition's own names), built once."""
    assert all(c.isidentifier() for c in columns)
    assignments = ", ".join(f'"{c}" = %({c})s' for c in columns)
    return (
        f"UPDATE order_tasks SET {assignments}, version = version + 1, updated_at = now()"  # noqa: S608 - identifiers checked above
        " WHERE id = %(id)s AND version = %(version)s RETURNING version"
    )


def _span_attributes(row: dict[str, Any]) -> dict[str, Any]:
    """Ids and states only: never amounts, account data or secrets."""
    return {
        "queue_id": row["queue_id"],
        "task_id": row["id"],
        "provider": row.get("provider"),
        "from_state": row["status"],
    }


def _observe_transition(from_status: str, to_status: str, since: datetime, now: datetime) -> None:
    seconds = max((now - since).total_seconds(), 0.0)

    def observe() -> None:
        metrics.TRANSITIONS.labels(from_status, to_status).inc()
        metrics.TASK_TIME_IN_STATE.labels(from_status).observe(seconds)

    commit_hooks.on_commit(observe)


@dataclass(frozen=True)
class _Result:
    token: int
    strict: bool
