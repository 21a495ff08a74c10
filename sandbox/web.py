"""HTTP helpers shared by the ledger and provider simulators."""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("sandbox.access")

# A request body larger than this is refused instead of being read into memory.
MAX_BODY_BYTES = 64 * 1024

_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
}


def error(status: int, code: str, message: str = "") -> JSONResponse:
    """The protocol's error body: `{"error": {"code", "message"}}`."""
    return JSONResponse({"error": {"code": code, "message": message or code}}, status_code=status)


def unauthorized() -> JSONResponse:
    return error(401, "unauthorized", "missing or wrong bearer token")


def bearer_ok(request: Request, expected: str) -> bool:
    """Constant-time check of `Authorization: Bearer <expected>`."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    # Compare bytes: compare_digest refuses non-ASCII str, and a header may hold any.
    return hmac.compare_digest(token.strip().encode(), expected.encode())


class BadBody(Exception):
    """The request body is not a JSON object. The message is safe to return."""


async def json_object(request: Request) -> dict[str, Any]:
    """Read the body as a JSON object, or raise BadBody."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadBody("body too large")
    try:
        data = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        raise BadBody("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadBody("body must be a JSON object")
    return data


def is_int(value: object) -> bool:
    # bool is an int subclass; `true` must not pass as 1.
    return isinstance(value, int) and not isinstance(value, bool)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Routing errors (404/405) in the protocol's JSON error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = _HTTP_CODES.get(status, "error")
    return error(status, code, exc.detail if isinstance(exc, HTTPException) else code)


class AccessLog:
    """One log line per request: method, path, status, duration.

    Deliberately no headers, query strings or bodies: they carry api keys,
    bearer tokens and webhook secrets.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed_ms = (time.monotonic() - started) * 1000
            log.info("%s %s %s %.1fms", scope["method"], scope["path"], status, elapsed_ms)
