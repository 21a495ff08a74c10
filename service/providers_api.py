"""Provider health for on-call: each provider's circuit, recent outcomes, orders in
flight and limits, and the operator's override of a circuit (audited in
provider_circuit_events with the operator's name)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from service import health
from service.api import services
from service.models import BadRequest, CircuitOverride
from service.ops_api import body_of, jsonable, require_ops


async def list_providers(request: Request) -> JSONResponse:
    require_ops(request)
    svc = services(request)
    async with svc.pool.connection() as conn:
        rows = await health.report(conn, svc.providers)
    return JSONResponse({"providers": [jsonable(r) for r in rows]})


async def set_circuit(request: Request) -> JSONResponse:
    require_ops(request)
    svc = services(request)
    name = request.path_params["provider"]
    if name not in svc.providers:
        raise BadRequest(404, "not_found", "no such provider")
    override = await body_of(request, CircuitOverride)
    state = None if override.state == "auto" else override.state
    async with svc.pool.connection() as conn:
        await health.force(conn, name, state, f"{override.operator}", override.reason)
        rows = await health.report(conn, {name: svc.providers[name]})
    return JSONResponse(jsonable(rows[0]))


PROVIDER_ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/ops/v1/providers", list_providers, ["GET"]),
    ("/ops/v1/providers/{provider}/circuit", set_circuit, ["POST"]),
]
