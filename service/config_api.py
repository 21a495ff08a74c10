"""The ops API of the live configuration (service/live_config.py): read it (`viewer`),
change it (`admin`), each change a new version with who, why, old and new.

A change is validated whole before anything is stored: a bad field refuses the
change with a 422 naming it, and the version in force stays. `expected_version`
turns a lost update into a 409: two people editing at once cannot silently undo
each other. Every process applies a change within seconds (LISTEN/NOTIFY, with a
periodic re-read under it).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from engine.journal import Conn
from service import config_store
from service.api import services
from service.cohort_guard_api import COHORT_ROUTES
from service.config_models import ProviderChange, ProviderRemoval, RolloutChange
from service.config_store import DOCUMENTS, Document, VersionConflict
from service.config_views import history_view, version_view
from service.identity import require
from service.models import BadRequest, invalid
from service.ops_api import body_of
from service.principals import ADMIN, VIEWER
from service.provider_documents import parse_provider

# A provider's name is a path segment (its webhook URL) and a TOML key.
PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_HISTORY = 200


async def in_force(request: Request) -> JSONResponse:
    await require(request, VIEWER)
    svc = services(request)
    async with svc.pool.connection() as conn:
        shown = {
            name: version_view((await config_store.history(conn, svc.live.scope, name, 1))[0])
            for name in DOCUMENTS
        }
    return JSONResponse(shown)


async def history(request: Request) -> JSONResponse:
    await require(request, VIEWER)
    svc = services(request)
    name = _document(request.path_params["document"])
    limit = _limit(request.query_params.get("limit", "50"))
    async with svc.pool.connection() as conn:
        found = await config_store.history(conn, svc.live.scope, name, limit + 1)
    before_oldest = found[limit] if len(found) > limit else None
    return JSONResponse({"name": name, "versions": history_view(found[:limit], before_oldest)})


async def change_rollout(request: Request) -> JSONResponse:
    person = await require(request, ADMIN)
    svc = services(request)
    change = await body_of(request, RolloutChange)

    async def apply(conn: Conn) -> int:
        return await svc.live.change_rollout(
            conn,
            lambda _: change.config,
            actor=person.actor,
            reason=change.reason,
            expected=change.expected_version,
        )

    return await _changed(request, "rollout", apply)


async def change_provider(request: Request) -> JSONResponse:
    person = await require(request, ADMIN)
    svc = services(request)
    name = _provider_name(request.path_params["provider"])
    change = await body_of(request, ProviderChange)
    try:
        config = parse_provider(name, change.settings, svc.providers.get(name))
    except ValidationError as exc:
        raise _under("settings", exc) from None

    async def apply(conn: Conn) -> int:
        return await svc.live.change_providers(
            conn,
            lambda providers: {**providers, name: config},
            actor=person.actor,
            reason=change.reason,
            expected=change.expected_version,
        )

    return await _changed(request, "providers", apply)


async def remove_provider(request: Request) -> JSONResponse:
    person = await require(request, ADMIN)
    svc = services(request)
    name = _provider_name(request.path_params["provider"])
    if name not in svc.providers:
        raise BadRequest(404, "not_found", "no such provider")
    removal = await body_of(request, ProviderRemoval)

    async def apply(conn: Conn) -> int:
        return await svc.live.change_providers(
            conn,
            lambda providers: {n: c for n, c in providers.items() if n != name},
            actor=person.actor,
            reason=removal.reason,
            expected=removal.expected_version,
        )

    return await _changed(request, "providers", apply)


async def _changed(
    request: Request, name: Document, apply: Callable[[Conn], Awaitable[int]]
) -> JSONResponse:
    """Run one change; its refusals as the API's error objects."""
    async with services(request).pool.connection() as conn:
        try:
            version = await apply(conn)
        except VersionConflict as exc:
            raise BadRequest(409, "version_conflict", str(exc)) from None
        except ValidationError as exc:
            raise invalid(exc) from None
        except ValueError as exc:  # a rule across fields: an unknown adapter, no provider left
            details = [{"field": "settings", "message": str(exc)}]
            raise BadRequest(422, "invalid_request", "request is invalid", details) from None
    return JSONResponse({"name": name, "version": version})


def _under(prefix: str, exc: ValidationError) -> BadRequest:
    found = invalid(exc)
    for detail in found.details or []:
        detail["field"] = f"{prefix}.{detail['field']}"
    return found


def _document(value: str) -> Document:
    for name in DOCUMENTS:
        if value == name:
            return name
    raise BadRequest(404, "not_found", "no such configuration document")


def _provider_name(value: str) -> str:
    if not PROVIDER_NAME.match(value):
        details = [{"field": "provider", "message": "lowercase letters, digits, - and _"}]
        raise BadRequest(422, "invalid_request", "request is invalid", details)
    return value


def _limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_HISTORY:
        details = [{"field": "limit", "message": f"an integer within 1..{MAX_HISTORY}"}]
        raise BadRequest(422, "invalid_request", "request is invalid", details)
    return int(value)


CONFIG_ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/ops/v1/config", in_force, ["GET"]),
    ("/ops/v1/config/{document}/history", history, ["GET"]),
    ("/ops/v1/config/rollout", change_rollout, ["PUT"]),
    ("/ops/v1/config/providers/{provider}", change_provider, ["PUT"]),
    ("/ops/v1/config/providers/{provider}/remove", remove_provider, ["POST"]),
    *COHORT_ROUTES,  # restoring a cohort moved back (service/cohort_guard_api.py)
]
