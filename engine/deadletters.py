"""Dead letters: jobs that failed for good, kept until someone replays them.

A job that exhausts its retries (or fails with an error that is never worth
retrying) is written here with an audit row and an `order.task.dlq` outbox
event, in one transaction. Nothing else changes: a task whose commit or
release is dead-lettered keeps its money frozen until the replay succeeds.
"""

from __future__ import annotations

import traceback
from typing import Any

import procrastinate
from psycopg.types.json import Jsonb

from engine.db import Pool
from engine.journal import Conn, Entry, journal

_TASK_OF_JOB = """
SELECT t.id::text AS task_id, q.* FROM order_tasks t JOIN order_queues q ON q.id = t.queue_id
WHERE t.id = %(task_id)s::uuid
   OR t.id = (SELECT reference::uuid FROM webhook_inbox
              WHERE id = %(inbox_id)s AND reference ~ '^[0-9a-f-]{36}$')
"""


async def withdrawal_of_job(conn: Conn, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The queue row (plus task_id, if the job is about one task) a job points at."""
    if kwargs.get("queue_id"):  # queue-level jobs, e.g. the outcome callback
        query = "SELECT NULL::text AS task_id, q.* FROM order_queues q WHERE q.id = %s::uuid"
        found: dict[str, Any] | None = await (
            await conn.execute(query, (kwargs["queue_id"],))
        ).fetchone()
        return found
    params = {"task_id": kwargs.get("task_id"), "inbox_id": kwargs.get("inbox_id")}
    row: dict[str, Any] | None = await (await conn.execute(_TASK_OF_JOB, params)).fetchone()
    return row


def _error_text(exc: BaseException) -> str:
    # Type and message only, bounded: exception messages here never carry secrets
    # (clients raise our own typed errors), and the stack trace goes to the log.
    return "".join(traceback.format_exception_only(exc)).strip()[:2000]


async def record(pool: Pool, job: procrastinate.jobs.Job, exc: BaseException) -> None:
    args: dict[str, Any] = dict(job.task_kwargs)
    async with pool.connection() as conn, conn.transaction():
        queue = await withdrawal_of_job(conn, args)
        task_id = queue["task_id"] if queue else None
        inserted = await (
            await conn.execute(
                "INSERT INTO dead_letters (job_id, task_name, args, task_id, queue_id, attempts,"
                " error) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id) DO NOTHING"
                " RETURNING id",
                (
                    job.id,
                    job.task_name,
                    Jsonb(args),
                    task_id,
                    queue["id"] if queue else None,
                    job.attempts + 1,
                    _error_text(exc),
                ),
            )
        ).fetchone()
        if inserted is None or queue is None:
            return
        # A step that failed for good leaves its task waiting (money frozen until a
        # replay): that is for a person, so the withdrawal shows up in /attention.
        await conn.execute(
            "UPDATE order_queues SET needs_attention = true, attention_reason = %s,"
            " updated_at = now() WHERE id = %s",
            (
                f"dead_letter {inserted['id']}: {job.task_name} {args.get('activity', '')}".strip(),
                queue["id"],
            ),
        )
        payload = {
            "dead_letter_id": inserted["id"],
            "job": job.task_name,
            "args": args,
            "error": _error_text(exc),
        }
        await journal(
            conn,
            queue,
            Entry(
                "order.task.dlq",
                task_id,
                None,
                "DEAD_LETTER",
                "dead_lettered",
                payload,
                "worker",
                None,
            ),
        )


async def list_open(conn: Conn, limit: int = 100) -> list[dict[str, Any]]:
    rows = await (
        await conn.execute(
            "SELECT id, job_id, task_name, args, task_id::text, queue_id::text, attempts, error,"
            " created_at FROM dead_letters WHERE replayed_at IS NULL ORDER BY id LIMIT %s",
            (limit,),
        )
    ).fetchall()
    return [{**r, "created_at": r["created_at"].isoformat()} for r in rows]


class NotReplayable(Exception):
    pass


async def replay(conn: Conn, app: procrastinate.App, dead_letter_id: int, operator: str) -> int:
    """Defer the same job again (same arguments); returns the new job id."""
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT * FROM dead_letters WHERE id = %s FOR UPDATE", (dead_letter_id,)
            )
        ).fetchone()
        if row is None or row["replayed_at"] is not None:
            raise NotReplayable("no such open dead letter")
        job_id: int = (
            await app.tasks[row["task_name"]].configure(connection=conn).defer_async(**row["args"])
        )
        await conn.execute(
            "UPDATE dead_letters SET replayed_at = now(), replayed_by = %s, replay_job_id = %s"
            " WHERE id = %s",
            (operator, job_id, dead_letter_id),
        )
        return job_id
