"""The equal-I/O baseline: a bare procrastinate state machine that does the service's I/O.

The same outbound calls to the same sandbox (ledger freeze and commit, the
provider's create, the outcome told to cascade-core), the same inbound HTTP
(submissions from the same load generator, the provider's signed webhook,
checked with activities.standard_webhooks) on starlette + uvicorn, the same
client library (aiohttp). Its steps are what a careful engineer writes with
nothing else around them: the call, then one transaction (lock the row,
version + 1, one audit row, the next job deferred on the same connection).

submit -> FREEZING -> CREATING -> EXECUTING -(webhook)-> SETTLING -> SUCCEEDED -> NOTIFIED

Run the API: `python bench/benchlib/baseline_io.py api URL PORT SECRET`;
a worker: `python bench/benchlib/baseline_io.py worker URL SANDBOX_URL CONCURRENCY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import procrastinate
import uvicorn
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root
from activities.standard_webhooks import WebhookRejected, verify

TOKEN, LEDGER_TOKEN = "dev-api-token", "dev-ledger-token"
PROVIDER = "instant"
SCHEMA = """
CREATE TABLE IF NOT EXISTS io_tasks (
    id uuid PRIMARY KEY, order_id text NOT NULL UNIQUE, amount text NOT NULL,
    currency text NOT NULL, state text NOT NULL, version int NOT NULL DEFAULT 0,
    provider_ref text, created_at timestamptz NOT NULL DEFAULT now(), done_at timestamptz);
CREATE TABLE IF NOT EXISTS io_audit (
    id bigserial PRIMARY KEY, task_id uuid NOT NULL, from_state text, to_state text NOT NULL,
    at timestamptz NOT NULL DEFAULT now());
"""
# state -> (the state after its call, whether a job takes it on from there)
NEXT = {
    "FREEZING": ("CREATING", True),
    "CREATING": ("EXECUTING", False),  # the provider's webhook moves it on
    "SETTLING": ("SUCCEEDED", True),
    "SUCCEEDED": ("NOTIFIED", False),
}
Pool = AsyncConnectionPool[AsyncConnection[Any]]


async def transition(
    conn: AsyncConnection[Any],
    app: procrastinate.App,
    task_id: str,
    expect: tuple[str, ...],
    new: str,
    job: bool,
) -> bool:
    """One step's transaction (the caller opened it): lock, check, version + 1, audit,
    the next job. False: the task had moved on (a replayed job or webhook)."""
    row = await (
        await conn.execute("SELECT state FROM io_tasks WHERE id = %s FOR UPDATE", (task_id,))
    ).fetchone()
    if row is None or row[0] not in expect:
        return False
    await conn.execute(
        "UPDATE io_tasks SET state = %s, version = version + 1,"
        " done_at = CASE WHEN %s = 'SUCCEEDED' THEN now() ELSE done_at END WHERE id = %s",
        (new, new, task_id),
    )
    await conn.execute(
        "INSERT INTO io_audit (task_id, from_state, to_state) VALUES (%s, %s, %s)",
        (task_id, row[0], new),
    )
    if job:
        await app.tasks["step"].configure(connection=conn).defer_async(task_id=task_id, expect=new)
    return True


class Calls:
    """The step's outbound calls, as the service makes them (its paths, bodies, keys)."""

    def __init__(self, sandbox: str) -> None:
        self.sandbox = sandbox
        self.http = aiohttp.ClientSession(json_serialize=json.dumps)
        self.ledger = {"Authorization": f"Bearer {LEDGER_TOKEN}"}

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        async with self.http.post(self.sandbox + path, json=body, headers=headers) as answer:
            await answer.read()
            if answer.status >= 300:  # a failed job is retried by nobody: the bench hangs
                raise RuntimeError(f"{path}: http {answer.status}")

    async def run(self, state: str, task: dict[str, Any]) -> None:
        key = str(task["id"])
        money = {"amount": task["amount"], "currency": task["currency"]}
        if state == "FREEZING":
            body = {"provider": PROVIDER, **money, "order_id": task["order_id"]}
            await self._post(f"/ledger/v1/holds/{key}/freeze", body, self.ledger)
        elif state == "CREATING":
            headers = {"Authorization": f"Bearer sk_test_{PROVIDER}", "Idempotency-Key": key}
            path = f"/providers/{PROVIDER}/v1/orders"
            await self._post(path, {"reference": key, **money}, headers)
        elif state == "SETTLING":
            await self._post(f"/ledger/v1/holds/{key}/commit", {}, self.ledger)
        elif state == "SUCCEEDED":
            outcome = {
                "withdrawal_id": key,
                "order_id": task["order_id"],
                "status": "SUCCEEDED",
                **money,
                "provider": PROVIDER,
                "provider_reference": task["provider_ref"],
                "finished_at": task["done_at"].isoformat(),
            }
            headers = {**self.ledger, "Idempotency-Key": key}
            await self._post("/core/v1/withdrawal-outcomes", outcome, headers)


def build_app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="step", queue="steps", pass_context=True)
    async def step(context: procrastinate.JobContext, task_id: str, expect: str) -> None:
        pool: Pool = context.additional_context["pool"]
        calls: Calls = context.additional_context["calls"]
        async with pool.connection() as conn:  # the row, read before the call
            cur = await conn.execute(
                "SELECT id, order_id, amount, currency, provider_ref, done_at, state"
                " FROM io_tasks WHERE id = %s",
                (task_id,),
            )
            names = [c.name for c in cur.description or []]
            row = await cur.fetchone()
        if row is None or row[-1] != expect:
            return
        await calls.run(expect, dict(zip(names, row, strict=True)))
        new, job = NEXT[expect]
        async with pool.connection() as conn, conn.transaction():
            await transition(conn, app, task_id, (expect,), new, job)

    return app


def build_api(url: str, secret: str) -> Starlette:
    """Submissions and the provider's webhooks, each one transaction."""
    app = build_app(url)
    pool: Pool = AsyncConnectionPool(url, open=False, max_size=10, kwargs={"autocommit": True})

    async def submit(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        body = json.loads(await request.body())
        task_id = str(uuid.uuid4())
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO io_tasks (id, order_id, amount, currency, state)"
                " VALUES (%s, %s, %s, %s, 'FREEZING') ON CONFLICT (order_id) DO NOTHING",
                (task_id, body["order_id"], body["amount"], body["currency"]),
            )
            if cur.rowcount:
                await conn.execute(
                    "INSERT INTO io_audit (task_id, from_state, to_state)"
                    " VALUES (%s, NULL, 'FREEZING')",
                    (task_id,),
                )
                await (
                    app.tasks["step"]
                    .configure(connection=conn)
                    .defer_async(task_id=task_id, expect="FREEZING")
                )
        return JSONResponse({"id": task_id}, status_code=201 if cur.rowcount else 200)

    async def webhook(request: Request) -> Response:
        body = await request.body()
        try:
            verify([secret], request.headers, body, now=int(time.time()), tolerance_s=300)
        except WebhookRejected as exc:
            return JSONResponse({"error": exc.reason}, status_code=401)
        data = json.loads(body)["data"]
        if data["status"] != "succeeded":
            return Response(status_code=202)
        async with pool.connection() as conn, conn.transaction():
            # the webhook may come before the create's answer is stored: it proves the order
            if await transition(
                conn, app, data["reference"], ("CREATING", "EXECUTING"), "SETTLING", True
            ):
                await conn.execute(
                    "UPDATE io_tasks SET provider_ref = %s WHERE id = %s",
                    (data["id"], data["reference"]),
                )
        return Response(status_code=202)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await pool.open()
        async with app.open_async():
            yield
        await pool.close()

    routes = [
        Route("/v1/withdrawals", submit, methods=["POST"]),
        Route(f"/webhooks/{PROVIDER}", webhook, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def run_worker(url: str, sandbox: str, concurrency: int) -> None:
    app = build_app(url)
    pool: Pool = AsyncConnectionPool(
        url, open=False, max_size=concurrency + 2, kwargs={"autocommit": True}
    )
    await pool.open()
    calls = Calls(sandbox)
    async with app.open_async():
        await app.run_worker_async(
            concurrency=concurrency,
            additional_context={"pool": pool, "calls": calls},
            fetch_job_polling_interval=0.5,
            delete_jobs="successful",
        )
    await calls.http.close()


if __name__ == "__main__":
    if sys.argv[1] == "api":
        _, _, db, port, key = sys.argv
        uvicorn.run(build_api(db, key), host="127.0.0.1", port=int(port), access_log=False)
    else:
        asyncio.run(run_worker(sys.argv[2], sys.argv[3], int(sys.argv[4])))
