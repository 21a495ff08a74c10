"""Provider health for on-call: each provider's circuit, recent outcomes, orders in
flight and limits (`viewer`), and an admin's override of a circuit (`admin`;
audited in provider_circuit_events with the signed-in person as actor)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from service import health
from service.api import services
from service.identity import require
from service.models import BadRequest, CircuitOverride
from service.ops_api import body_of, jsonable
from service.principals import ADMIN, VIEWER


async def list_providers(request: Request) -> JSONResponse:
    await require(request, VIEWER)
    svc = services(request)
    async with svc.pool.connection() as conn:
        rows = await health.report(conn, svc.providers)
    return JSONResponse({"providers": [jsonable(r) for r in rows]})


async def set_circuit(request: Request) -> JSONResponse:
    person = await require(request, ADMIN)
    svc = services(request)
    name = request.path_params["provider"]
    if name not in svc.providers:
        raise BadRequest(404, "not_found", "no such provider")
    override = await body_of(request, CircuitOverride)
    state = None if override.state == "auto" else override.state
    async with svc.pool.connection() as conn:
        await health.force(conn, name, state, person.actor, override.reason)
        rows = await health.report(conn, {name: svc.providers[name]})
    return JSONResponse(jsonable(rows[0]))


PROVIDER_ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/ops/v1/providers", list_providers, ["GET"]),
    ("/ops/v1/providers/{provider}/circuit", set_circuit, ["POST"]),
]
