"""HTTP handlers: cascade-core's API, provider webhooks, health and OpenAPI."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse

from activities.standard_webhooks import WebhookRejected
from engine import logs, tracing
from service import withdrawal_metrics as metrics
from service.api_keys import READ, SUBMIT, Caller, authorised
from service.edge import error_response, require_json
from service.models import BadRequest, parse_withdrawal, withdrawal_ident
from service.openapi import for_providers
from service.wiring import Services
from service.withdrawals import (
    Rollout,
    events_view,
    find_queue,
    submit_and_view,
    withdrawal_view,
)

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
log = logging.getLogger("payment.api")


def services(request: Request) -> Services:
    found = request.app.state.services
    assert isinstance(found, Services)
    return found


def check_bearer(request: Request, tokens: Sequence[SecretStr]) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, offered = header.partition(" ")
    matched = False
    for token in tokens:  # compare against every token: timing leaks nothing
        matched |= hmac.compare_digest(offered.encode(), token.get_secret_value().encode())
    if scheme.lower() != "bearer" or not offered or not matched:
        raise BadRequest(401, "unauthorized", "missing or invalid bearer token")


async def read_body(request: Request, limit: int) -> bytes:
    """Refuse other media types, and oversized bodies before reading (and parsing) them."""
    require_json(request)
    return await read_limited(request, limit)


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (413) past `limit` bytes before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(413, "body_too_large", f"body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, "body_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def trace_id_of(request: Request) -> str:
    """The caller's W3C trace id, or a new one: every withdrawal gets a trace. With
    tracing on, the request's span already carries it (or started a new one)."""
    traced = tracing.current_trace_id()
    if traced is not None:
        return traced
    match = _TRACEPARENT.match(request.headers.get("traceparent", ""))
    return match.group(1) if match else secrets.token_hex(16)


async def create_withdrawal(request: Request) -> JSONResponse:
    svc = services(request)
    async with authorised(svc, request, SUBMIT) as caller:
        return await _create(request, svc, caller)


async def _create(request: Request, svc: Services, caller: Caller) -> JSONResponse:
    body = await read_body(request, svc.settings.max_body_bytes)
    # One reading of the live configuration decides it all: the providers checked are
    # the version the withdrawal keeps, and the gate is the version in force now.
    rollout = Rollout(svc.gate, svc.live.providers.version)
    known = set(svc.live.providers.providers)
    withdrawal = parse_withdrawal(body, known, svc.settings.max_cascade)
    caller.require_merchant(withdrawal.merchant_id)
    logs.bind(order_id=withdrawal.order_id, trace_id=trace_id_of(request))
    async with svc.pool.connection() as conn:
        trace_id = logs.current()["trace_id"]
        view, created = await submit_and_view(
            conn, svc.engine, withdrawal, trace_id, rollout, tracing.current_traceparent()
        )
    logs.bind(queue_id=view["id"])
    log.info("withdrawal %s", "submitted" if created else "replayed")
    return JSONResponse(view, status_code=201 if created else 200)


async def queue_or_404(svc: Services, request: Request, caller: Caller) -> str:
    """The `{ident}` withdrawal's id: a 404 when there is none, a 403 when it is
    another merchant's than the caller's key is for."""
    async with svc.pool.connection() as conn:
        found = await find_queue(conn, withdrawal_ident(request))
    if found is None or found["queue_id"] is None:
        raise BadRequest(404, "not_found", "no such withdrawal")
    caller.require_merchant(str(found["merchant_id"]))
    logs.bind(**found)
    return found["queue_id"]


async def get_withdrawal(request: Request) -> JSONResponse:
    svc = services(request)
    async with authorised(svc, request, READ) as caller:
        queue_id = await queue_or_404(svc, request, caller)
        async with svc.pool.connection() as conn:
            return JSONResponse(await withdrawal_view(conn, queue_id))


async def get_events(request: Request) -> JSONResponse:
    svc = services(request)
    async with authorised(svc, request, READ) as caller:
        queue_id = await queue_or_404(svc, request, caller)
        async with svc.pool.connection() as conn:
            return JSONResponse({"events": await events_view(conn, queue_id)})


async def receive_webhook(request: Request) -> JSONResponse:
    svc = services(request)
    provider = request.path_params["provider"]
    adapter = svc.adapters.get(provider)
    if adapter is None:
        raise BadRequest(404, "unknown_provider", "no such provider")
    body = await read_body(request, svc.settings.max_body_bytes)
    try:
        notice = adapter.verify_webhook(
            request.headers, body, int(time.time()), svc.settings.webhook_tolerance_s
        )
    except WebhookRejected as exc:
        status = 400 if exc.reason in {"unparseable_body", "missing_data", "bad_payload"} else 401
        log.warning("webhook from %s rejected: %s", provider, exc.reason)
        metrics.WEBHOOK_VERIFICATIONS.labels(provider, exc.reason).inc()
        raise BadRequest(status, "webhook_rejected", exc.reason) from None
    try:
        fresh = await _store_webhook(svc, provider, notice.webhook_id, notice.reference, body)
    except Exception as exc:  # a validly signed webhook we did not take: the SLO's bad event
        code = f"{exc.status // 100}xx" if isinstance(exc, BadRequest) else "5xx"
        metrics.WEBHOOK_ANSWERS.labels(provider, code).inc()
        raise
    metrics.WEBHOOK_ANSWERS.labels(provider, "2xx").inc()
    return JSONResponse(
        {"status": "accepted" if fresh else "duplicate"}, status_code=202 if fresh else 200
    )


async def _store_webhook(
    svc: Services, provider: str, webhook_id: str, reference: str, body: bytes
) -> bool:
    """A verified webhook, stored (and applied, or its job deferred); False: a duplicate."""
    await svc.webhook_tokens.take(provider)  # verified first: forgeries spend no token
    logs.bind(task_id=reference if _UUID.match(reference) else None)
    outcome = await svc.inbox.accept(svc.runtime, provider, webhook_id, reference, body.decode())
    fresh = outcome is not None  # None: a duplicate, stored and applied before
    metrics.WEBHOOK_VERIFICATIONS.labels(provider, "accepted" if fresh else "duplicate").inc()
    return fresh


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    try:
        async with services(request).pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1 FROM order_queues LIMIT 1")
    except Exception:  # any failure means "not ready"; the detail goes to the log only
        return error_response(503, "not_ready", "database unavailable")
    return JSONResponse({"status": "ready"})


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(for_providers(tuple(services(request).providers)))


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/v1/withdrawals", create_withdrawal, ["POST"]),
    ("/v1/withdrawals/{ident}", get_withdrawal, ["GET"]),
    ("/v1/withdrawals/{ident}/events", get_events, ["GET"]),
    ("/webhooks/{provider}", receive_webhook, ["POST"]),
    ("/healthz", healthz, ["GET"]),
    ("/readyz", readyz, ["GET"]),
    ("/openapi.json", openapi, ["GET"]),
]
