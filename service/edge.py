"""One error path for every failure at the HTTP edge.

Every 4xx and 5xx, the router's 404 and 405 and a crash included, answers the
same JSON object, `{"error": {"code", "message", "details"?}}`, with a stable
code. A database that is down or restarting is a 503 `database_unavailable`
with `Retry-After`, which a client can retry; nothing about the failure (a
connection string, a socket path, a query) reaches the body.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.models import BadRequest

log = logging.getLogger("payment.api")
RETRY_AFTER_S = 2
_ROUTER_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
_JSON = "application/json"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = BadRequest(status, code, message).body()
    return JSONResponse(body, status_code=status, headers=headers)


def require_json(request: Request) -> None:
    """JSON routes take `application/json`, optionally with `charset=utf-8`."""
    media, *params = (request.headers.get("content-type") or "").split(";")
    charset_ok = all(
        key.strip().lower() != "charset" or value.strip().strip('"').lower() == "utf-8"
        for key, _, value in (p.partition("=") for p in params)
    )
    if media.strip().lower() != _JSON or not charset_ok:
        raise BadRequest(415, "unsupported_media_type", "send the body as application/json")


def bad_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BadRequest)
    wait = exc.retry_after_s
    headers = None if wait is None else {"Retry-After": str(wait)}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def router_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _ROUTER_CODES.get(exc.status_code, "http_error")
    message = "no such route" if exc.status_code == 404 else str(exc.detail).lower()
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    # The exception's text can name the server's socket or host: log its type only.
    log.warning("database unavailable: %s", type(exc).__name__)
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; retry later",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def internal_error(_request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises it after this answer, so the server logs the traceback.
    log.error("unhandled %s", type(exc).__name__)
    return error_response(500, "internal_error", "internal error")


# psycopg's OperationalError covers a refused or dropped connection, a server
# shutting down or starting up, and the pool's timeout (PoolTimeout subclasses it).
EXCEPTION_HANDLERS: dict[Any, Any] = {
    BadRequest: bad_request,
    HTTPException: router_error,
    psycopg.OperationalError: database_unavailable,
    # A connection on a standby, mid-failover (the pool replaces it): retry later.
    psycopg.errors.ReadOnlySqlTransaction: database_unavailable,
    Exception: internal_error,
}
