"""The baseline: a bare procrastinate state machine of the withdrawal's shape.

submit -> FREEZING -> CREATING -> EXECUTING -> SUCCEEDED. Each step is one
transaction: lock the row, version + 1, one audit row, the next job deferred on
the same connection. No ledger, no provider, no outbox: what the same
durability costs with nothing else around it.

Run a worker: `python bench/benchlib/baseline.py URL CONCURRENCY`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import procrastinate
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root

SCHEMA = """
CREATE TABLE IF NOT EXISTS base_tasks (
    id uuid PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(), done_at timestamptz);
CREATE TABLE IF NOT EXISTS base_audit (
    id bigserial PRIMARY KEY, task_id uuid NOT NULL, from_state text, to_state text NOT NULL,
    at timestamptz NOT NULL DEFAULT now());
"""
NEXT = {"FREEZING": "CREATING", "CREATING": "EXECUTING", "EXECUTING": "SUCCEEDED"}
Pool = AsyncConnectionPool[AsyncConnection[Any]]


def build_app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="step", queue="steps", pass_context=True)
    async def step(context: procrastinate.JobContext, task_id: str, expect: str) -> None:
        pool: Pool = context.additional_context["pool"]
        async with pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    "SELECT state, version FROM base_tasks WHERE id = %s FOR UPDATE", (task_id,)
                )
            ).fetchone()
            if row is None or row[0] != expect:
                return
            new = NEXT[expect]
            await conn.execute(
                "UPDATE base_tasks SET state = %s, version = version + 1,"
                " done_at = CASE WHEN %s = 'SUCCEEDED' THEN now() END"
                " WHERE id = %s AND version = %s",
                (new, new, task_id, row[1]),
            )
            await conn.execute(
                "INSERT INTO base_audit (task_id, from_state, to_state) VALUES (%s, %s, %s)",
                (task_id, expect, new),
            )
            if new != "SUCCEEDED":
                await step.configure(connection=conn).defer_async(task_id=task_id, expect=new)

    return app


async def submit(pool: Pool, app: procrastinate.App) -> str:
    task_id = str(uuid.uuid4())
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("INSERT INTO base_tasks (id, state) VALUES (%s, 'FREEZING')", (task_id,))
        await conn.execute(
            "INSERT INTO base_audit (task_id, from_state, to_state)"
            " VALUES (%s, 'PENDING', 'FREEZING')",
            (task_id,),
        )
        await (
            app.tasks["step"]
            .configure(connection=conn)
            .defer_async(task_id=task_id, expect="FREEZING")
        )
    return task_id


async def run_worker(url: str, concurrency: int) -> None:
    app = build_app(url)
    pool: Pool = AsyncConnectionPool(
        url, open=False, max_size=concurrency + 2, kwargs={"autocommit": True}
    )
    await pool.open()
    async with app.open_async():
        await app.run_worker_async(
            concurrency=concurrency,
            additional_context={"pool": pool},
            fetch_job_polling_interval=0.5,
            delete_jobs="successful",
        )


if __name__ == "__main__":
    asyncio.run(run_worker(sys.argv[1], int(sys.argv[2])))
