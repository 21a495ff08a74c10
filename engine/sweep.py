"""The sweep: tasks that wait for nothing are repaired, or shown to a person.

Every live task waits for something: an activity (its `activity` and token), a
timer, or a person (MANUAL_CHECK). Each of those is written in the transition's
own transaction, so none should ever go missing. But a job can fail for good
while the database is away, before its dead letter could be written, and then
nothing would ever move the task again. The sweep runs every few seconds in some
worker, and for each live task that has been quiet for `grace_s` with no job and
no timer:

- its activity was lost (the process running it right after the commit died,
  or its job failed without a dead letter): it is deferred again as a job with
  the same token (every activity is idempotent, and token-guarded), a *repair*;
- anything else (a dead letter already flagged it, or nothing says what it
  waits for): the withdrawal is flagged for attention, once.
"""

from __future__ import annotations

import logging
from typing import Any

from engine import metrics
from engine.contracts import Scheduler
from engine.journal import Conn
from workflows.core import sql_literals

log = logging.getLogger("payment.sweep")

# `{live}`: the definitions' live statuses, as literals (workflows/core.py
# sql_literals), so that the partial index order_tasks_open serves the scan.
_WAITING_FOR_NOTHING = """
SELECT t.id::text AS task_id, t.queue_id, t.status::text AS status, t.activity_token,
       t.activity,
       EXISTS (SELECT 1 FROM dead_letters d
                WHERE d.task_id = t.id AND d.replayed_at IS NULL) AS dead_lettered,
       q.needs_attention
FROM order_tasks t JOIN order_queues q ON q.id = t.queue_id
WHERE (t.status IN ({live})
       -- an unstarted task asking the ledger before it ends (withdrawal version 3)
       OR (t.status = 'PENDING' AND t.target IS NOT NULL))
  AND NOT (t.status = 'MANUAL_CHECK' AND t.target IS NULL)  -- a person has it
  AND t.updated_at < now() - make_interval(secs => %s)
  AND NOT EXISTS (SELECT 1 FROM timers tm WHERE tm.task_id = t.id)
  AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                   WHERE j.status IN ('todo', 'doing') AND j.args->>'task_id' = t.id::text)
ORDER BY t.updated_at
LIMIT %s
"""
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
_FLAG = (
    "UPDATE order_queues SET needs_attention = true, attention_reason = %s, updated_at = now()"
    " WHERE id = %s AND NOT needs_attention"
)


async def sweep(
    conn: Conn,
    scheduler: Scheduler,
    grace_s: float,
    live_statuses: frozenset[str],
    limit: int = 100,
    notifications: bool = False,
) -> dict[str, int]:
    """One pass over tasks in `live_statuses`; returns how many were repaired and
    flagged, and (with `notifications` on) how many untold outcomes were deferred again."""
    done = {"repaired": 0, "flagged": 0, "renotified": 0}
    query = _WAITING_FOR_NOTHING.format(live=sql_literals(live_statuses))
    async with conn.transaction():
        rows = await (await conn.execute(query, (grace_s, limit))).fetchall()
        for row in rows:
            action = await _handle(conn, scheduler, row)
            if action:
                done[action] += 1
        if notifications:
            untold = await (await conn.execute(_UNTOLD, (grace_s, limit))).fetchall()
            for row in untold:
                await scheduler.defer_notification(conn, row["queue_id"])
            done["renotified"] = len(untold)
    for action, count in done.items():  # counted once the transaction committed
        metrics.SWEEP_ACTIONS.labels(action).inc(count)
    return done


async def _handle(conn: Conn, scheduler: Scheduler, row: dict[str, Any]) -> str | None:
    if row["activity"] and row["activity_token"] is not None and not row["dead_lettered"]:
        log.warning(
            "task %s (%s) lost its %s job: deferring it again",
            row["task_id"],
            row["status"],
            row["activity"],
        )
        await scheduler.defer_activity(conn, row["task_id"], row["activity"], row["activity_token"])
        return "repaired"
    if row["needs_attention"]:
        return None
    reason = (
        "dead_letter: a step failed for good; replay it after the fix"
        if row["dead_lettered"]
        else f"stuck: task {row['task_id']} ({row['status']}) waits for no job and no timer"
    )
    log.error("withdrawal %s flagged: %s", row["queue_id"], reason)
    await conn.execute(_FLAG, (reason, row["queue_id"]))
    return "flagged"
