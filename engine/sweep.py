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
  waits for): the queue (a withdrawal) is flagged for attention, once.

Which tasks it checks the definitions say: their live statuses, and the storage's
`swept_also` and `swept_never` predicates (workflows/core.py, Storage).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from engine import metrics
from engine.contracts import OutcomeNotice, Scheduler
from engine.journal import Conn
from engine.naming import statement
from engine.rows import DbRow
from workflows.core import Storage, sql_literals

if TYPE_CHECKING:
    from engine.engine import Engine

log = logging.getLogger("payment.sweep")

# `{live}`: the definitions' live statuses, as literals (workflows/core.py
# sql_literals), so that the partial index on live tasks serves the scan.
_WAITING_FOR_NOTHING = """
SELECT t.id::text AS task_id, t.queue_id, t.status::text AS status, t.activity_token,
       t.activity,
       EXISTS (SELECT 1 FROM dead_letters d
                WHERE d.task_id = t.id AND d.replayed_at IS NULL) AS dead_lettered,
       q.needs_attention
FROM {tasks} t JOIN {queues} q ON q.id = t.queue_id
WHERE (t.status IN ({live}) OR {swept_also})
  AND NOT {swept_never}
  AND t.updated_at < now() - make_interval(secs => %s)
  AND NOT EXISTS (SELECT 1 FROM timers tm WHERE tm.task_id = t.id)
  AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                   WHERE j.status IN ('todo', 'doing') AND j.args->>'task_id' = t.id::text)
ORDER BY t.updated_at
LIMIT %s
"""
_FLAG = (
    "UPDATE {queues} SET needs_attention = true, attention_reason = %s, updated_at = now()"
    " WHERE id = %s AND NOT needs_attention"
)


def _waiting_query(storage: Storage, live_statuses: frozenset[str]) -> str:
    return _WAITING_FOR_NOTHING.format(
        live=sql_literals(live_statuses),
        swept_also=storage.swept_also,
        swept_never=storage.swept_never,
        **storage.names(),
    )


async def sweep(
    conn: Conn,
    engine: Engine,
    grace_s: float,
    notice: OutcomeNotice | None = None,
    limit: int = 100,
) -> dict[str, int]:
    """One pass over the engine's live tasks; returns how many were repaired and
    flagged, and (with a `notice`) how many untold outcomes were deferred again."""
    done = {"repaired": 0, "flagged": 0, "renotified": 0}
    query = _waiting_query(engine.storage, engine.definitions.live_statuses())
    async with conn.transaction():
        rows = await (await conn.execute(query, (grace_s, limit))).fetchall()
        for row in rows:
            action = await _handle(conn, engine.scheduler, engine.storage, row)
            if action:
                done[action] += 1
        if notice is not None:
            untold = await notice.untold(conn, grace_s, limit)
            for queue_id in untold:
                await engine.scheduler.defer_notification(conn, queue_id)
            done["renotified"] = len(untold)
    for action, count in done.items():  # counted once the transaction committed
        metrics.SWEEP_ACTIONS.labels(action).inc(count)
    return done


async def _handle(conn: Conn, scheduler: Scheduler, storage: Storage, row: DbRow) -> str | None:
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
    log.error("queue %s flagged: %s", row["queue_id"], reason)
    await conn.execute(statement(_FLAG, storage), (reason, row["queue_id"]))
    return "flagged"
