"""Finished procrastinate jobs leave its table (issue 23), on the `maintenance` job's
schedule (engine/jobs.py), so that it holds the jobs to run and not every job ever run.

Workers delete a job that succeeds as it finishes (worker.py, `delete_jobs`); what is
left is failed, cancelled and aborted jobs, and those finished by a process that keeps
them. A failed job goes once its dead letter is recorded (engine/deadletters.py): the
dead letter keeps what it was (task, arguments, attempts, error) and is what a replay
starts from, so the job row is a copy. A failed job whose dead letter was never written
(the database away at that moment) is the only record of the failure: it stays, and
the sweep still finds its task (engine/sweep.py). A job's events go with it (ON DELETE
CASCADE); a periodic defer that names it is unlinked by procrastinate's own trigger.
"""

from __future__ import annotations

from engine.journal import Conn

# In id order, a bounded batch per statement, so each transaction is short and the table
# is never scanned whole. procrastinate changes a job only while it is todo or doing; a
# finished one only by a person retrying it (back to todo): the row lock taken here
# (SKIP LOCKED: a purge running elsewhere takes other rows) and the status checked again
# under it keep such a job from being deleted from under its retry.
_PURGE = """
DELETE FROM procrastinate_jobs WHERE id IN (
    SELECT j.id FROM procrastinate_jobs j
    WHERE j.status IN ('succeeded', 'cancelled', 'aborted')
       OR (j.status = 'failed' AND EXISTS (SELECT 1 FROM dead_letters d WHERE d.job_id = j.id))
    ORDER BY j.id LIMIT %s
    FOR UPDATE SKIP LOCKED)
"""


async def purge_jobs(conn: Conn, batch: int = 1000, batches: int = 10) -> int:
    """Delete finished jobs whose record is kept elsewhere, up to `batches` batches of
    `batch` (the next run takes the rest); how many."""
    purged = 0
    for _ in range(batches):
        deleted = (await conn.execute(_PURGE, (batch,))).rowcount
        purged += max(deleted, 0)
        if deleted < batch:
            break
    return purged
