"""Dead letters: jobs that failed for good, kept until someone replays them.

A job that exhausts its retries (or fails with an error that is never worth
retrying) is written here with an audit row and a `<prefix>.task.dlq` outbox
event (`order.task.dlq` for withdrawals), in one transaction. Nothing else
changes: a task whose commit or release is dead-lettered keeps its money
frozen until the replay succeeds.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import procrastinate
from psycopg.types.json import Jsonb

from engine.db import Pool
from engine.journal import Conn, Entry, flag, journal
from engine.naming import statement
from engine.rows import DbRow, JsonObject, QueueRow, as_queue
from workflows.core import Storage

_TASK_AND_QUEUE = """
SELECT t.id::text AS task_id, q.* FROM {tasks} t JOIN {queues} q ON q.id = t.queue_id
WHERE t.id = %s::uuid
"""
_QUEUE = "SELECT NULL::text AS task_id, q.* FROM {queues} q WHERE q.id = %s::uuid"


async def subject_of_job(
    conn: Conn, storage: Storage, task_id: str | None, queue_id: str | None
) -> DbRow | None:
    """The queue row (plus `task_id`, if the job is about one task) a job points at."""
    if queue_id:  # queue-level jobs, e.g. the outcome callback
        found: DbRow | None = await (
            await conn.execute(statement(_QUEUE, storage), (queue_id,))
        ).fetchone()
        return found
    if not task_id:
        return None
    row: DbRow | None = await (
        await conn.execute(statement(_TASK_AND_QUEUE, storage), (task_id,))
    ).fetchone()
    return row


def _error_text(exc: BaseException) -> str:
    # Type and message only, bounded: exception messages here never carry secrets
    # (clients raise our own typed errors), and the stack trace goes to the log.
    return "".join(traceback.format_exception_only(exc)).strip()[:2000]


@dataclass(frozen=True)
class FailedJob:
    """A job that failed for good, and what it was about (the caller resolves it)."""

    job: procrastinate.jobs.Job
    error: BaseException
    task_id: str | None = None
    queue_id: str | None = None


async def record(pool: Pool, storage: Storage, failed: FailedJob) -> None:
    args: JsonObject = dict(failed.job.task_kwargs)
    async with pool.connection() as conn, conn.transaction():
        subject = await subject_of_job(conn, storage, failed.task_id, failed.queue_id)
        task_id = subject["task_id"] if subject else None
        queue_id = subject["id"] if subject else None
        inserted = await (
            await conn.execute(_INSERT, _insert_values(failed, args, task_id, queue_id))
        ).fetchone()
        if inserted is None or subject is None:
            return
        # A step that failed for good leaves its task waiting (money frozen until a
        # replay): that is for a person, so the queue shows up in /attention.
        job_name = failed.job.task_name
        what = f"dead_letter {inserted['id']}: {job_name} {args.get('activity', '')}".strip()
        await flag(conn, storage, queue_id, what)
        await _journal_dead_letter(
            conn, storage, as_queue(subject), task_id, inserted["id"], failed
        )


_INSERT = (
    "INSERT INTO dead_letters (job_id, task_name, args, task_id, queue_id, attempts, error)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id) DO NOTHING RETURNING id"
)


def _insert_values(
    failed: FailedJob, args: JsonObject, task_id: str | None, queue_id: object
) -> tuple[object, ...]:
    job = failed.job
    error = _error_text(failed.error)
    return (job.id, job.task_name, Jsonb(args), task_id, queue_id, job.attempts + 1, error)


async def _journal_dead_letter(
    conn: Conn,
    storage: Storage,
    queue: QueueRow,
    task_id: str | None,
    dead_letter_id: int,
    failed: FailedJob,
) -> None:
    payload = {
        "dead_letter_id": dead_letter_id,
        "job": failed.job.task_name,
        "args": dict(failed.job.task_kwargs),
        "error": _error_text(failed.error),
    }
    entry = Entry(
        "task.dlq", task_id, None, "DEAD_LETTER", "dead_lettered", payload, "worker", None
    )
    await journal(conn, storage, queue, entry)


async def list_open(conn: Conn, limit: int = 100) -> list[JsonObject]:
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
