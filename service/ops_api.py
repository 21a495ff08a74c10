"""The ops API: people, signed in through the OpenID issuer (service/identity.py),
each call an access token; separate from cascade-core's keys.

Manual checks, cancellation, dead letters and withdrawals needing attention.
Reads need `viewer`; resolve, cancel and replay need `resolver` (a resolve is
four-eyes' own route: service/approvals_api.py). Every decision
is a typed event in the audit trail whose actor is the authenticated person
(`Principal.actor`): an `operator` a body still carries is ignored.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from engine import deadletters
from engine.contracts import Origin, QueueFinished, UnknownTask
from service.api import queue_or_404, read_body, services
from service.api_keys import CANCEL, authorised
from service.identity import require
from service.models import (
    BadRequest,
    Cancellation,
    CoreCancellation,
    Replay,
    invalid,
    parse_json,
    withdrawal_ident,
)
from service.principals import RESOLVER, VIEWER
from service.withdrawals import find_queue_id, withdrawal_view
from workflows.core import IllegalTransition
from workflows.withdrawal_events import Cancel

M = TypeVar("M", bound=BaseModel)


async def body_of(request: Request, model: type[M]) -> M:
    svc = services(request)
    payload = parse_json(await read_body(request, svc.settings.max_body_bytes))
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise invalid(exc) from None


async def _ops_list(request: Request, key: str, query: str) -> JSONResponse:
    await require(request, VIEWER)
    async with services(request).pool.connection() as conn:
        rows = await (await conn.execute(query)).fetchall()
    return JSONResponse({key: [jsonable(r) for r in rows]})


async def manual_checks(request: Request) -> JSONResponse:
    # The same view ops query by hand (schema.sql), so both always agree.
    return await _ops_list(
        request,
        "tasks",
        "SELECT task_id::text, queue_id::text, order_id, provider, provider_ref, amount_minor,"
        " currency, last_reason, waiting_since FROM v_manual_check_queue ORDER BY waiting_since",
    )


async def _apply_to_task(request: Request, event: Any, actor: str) -> JSONResponse:
    svc = services(request)
    try:
        task_id = str(uuid.UUID(request.path_params["task_id"]))
    except ValueError:
        raise BadRequest(404, "not_found", "no such task") from None
    async with svc.pool.connection() as conn:
        try:
            await svc.engine.apply(conn, task_id, event, origin=Origin(actor=actor))
        except UnknownTask:
            raise BadRequest(404, "not_found", "no such task") from None
        except IllegalTransition as exc:
            raise BadRequest(409, "not_allowed", str(exc)) from None
        queue_id = await (
            await conn.execute("SELECT queue_id::text FROM order_tasks WHERE id = %s", (task_id,))
        ).fetchone()
        assert queue_id is not None
        return JSONResponse(await withdrawal_view(conn, queue_id["queue_id"]))


async def cancel_task(request: Request) -> JSONResponse:
    person = await require(request, RESOLVER)
    body = await body_of(request, Cancellation)
    return await _apply_to_task(request, Cancel(person.actor, body.reason), person.actor)


async def cancel_withdrawal(request: Request, actor: str, reason: str) -> JSONResponse:
    svc = services(request)
    async with svc.pool.connection() as conn:
        queue_id = await find_queue_id(conn, withdrawal_ident(request))
        if queue_id is None:
            raise BadRequest(404, "not_found", "no such withdrawal")
        try:
            await svc.engine.cancel_queue(conn, queue_id, Origin(actor=actor), reason)
        except QueueFinished as exc:
            raise BadRequest(409, "already_final", str(exc)) from None
        return JSONResponse(await withdrawal_view(conn, queue_id), status_code=202)


async def ops_cancel_withdrawal(request: Request) -> JSONResponse:
    person = await require(request, RESOLVER)
    body = await body_of(request, Cancellation)
    return await cancel_withdrawal(request, person.actor, body.reason)


async def core_cancel_withdrawal(request: Request) -> JSONResponse:
    """cascade-core's cancel: the same safe rule, for a key with `withdrawals:cancel`
    (and the withdrawal's merchant, when the key is bound to merchants)."""
    svc = services(request)
    async with authorised(svc, request, CANCEL) as caller:
        body = await body_of(request, CoreCancellation)
        await queue_or_404(svc, request, caller)  # 404 or 403 before anything changes
        return await cancel_withdrawal(request, caller.actor, body.reason)


async def dead_letters(request: Request) -> JSONResponse:
    await require(request, VIEWER)
    async with services(request).pool.connection() as conn:
        return JSONResponse({"dead_letters": await deadletters.list_open(conn)})


async def replay_dead_letter(request: Request) -> JSONResponse:
    person = await require(request, RESOLVER)
    await body_of(request, Replay)  # still a JSON object; its `operator` is not who acts
    svc = services(request)
    raw_id = str(request.path_params["dead_letter_id"])
    if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18):  # a bigint
        raise BadRequest(404, "not_found", "no such dead letter")
    dead_letter_id = int(raw_id)
    async with svc.pool.connection() as conn:
        try:
            job_id = await deadletters.replay(conn, svc.app, dead_letter_id, person.actor)
        except deadletters.NotReplayable as exc:
            raise BadRequest(404, "not_found", str(exc)) from None
    return JSONResponse({"replay_job_id": job_id}, status_code=202)


async def attention(request: Request) -> JSONResponse:
    return await _ops_list(
        request,
        "withdrawals",
        "SELECT id::text, order_id, status, attention_reason, updated_at"
        " FROM order_queues WHERE needs_attention ORDER BY updated_at",
    )


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


CONTROL_ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/v1/withdrawals/{ident}/cancel", core_cancel_withdrawal, ["POST"]),
    ("/ops/v1/manual-checks", manual_checks, ["GET"]),
    ("/ops/v1/tasks/{task_id}/cancel", cancel_task, ["POST"]),
    ("/ops/v1/withdrawals/{ident}/cancel", ops_cancel_withdrawal, ["POST"]),
    ("/ops/v1/dead-letters", dead_letters, ["GET"]),
    ("/ops/v1/dead-letters/{dead_letter_id}/replay", replay_dead_letter, ["POST"]),
    ("/ops/v1/attention", attention, ["GET"]),
]
