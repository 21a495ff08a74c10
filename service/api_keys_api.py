"""The ops API's API keys: create (the value shown once), list, rotate and revoke,
for an admin person (service/identity.py), audited in `api_key_events` with the
person's actor. Changes hold at once in every API process: no restart."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from service import api_key_store as store
from service.api import services
from service.api_key_models import KeyCreation, KeyRevocation, KeyRotation
from service.identity import require
from service.ops_api import body_of, jsonable
from service.principals import ADMIN


async def create_key(request: Request) -> JSONResponse:
    person = await require(request, ADMIN)
    spec = await body_of(request, KeyCreation)
    async with services(request).pool.connection() as conn:
        secret, row = await store.create(conn, spec, person.actor)
    return JSONResponse({"key": jsonable(row), "secret": secret}, status_code=201)


async def keys(request: Request) -> JSONResponse:
    """One route for both methods, so that its 405 names both in `Allow`."""
    return await (list_keys(request) if request.method == "GET" else create_key(request))


async def list_keys(request: Request) -> JSONResponse:
    await require(request, ADMIN)
    async with services(request).pool.connection() as conn:
        rows = await store.list_keys(conn)
    return JSONResponse({"keys": [jsonable(r) for r in rows]})


async def rotate_key(request: Request) -> JSONResponse:
    person = await require(request, ADMIN)
    change = await body_of(request, KeyRotation)
    svc = services(request)
    key_id = store.key_id_of(request.path_params["key_id"])
    grace_s = svc.settings.api_key_rotation_grace_s
    async with svc.pool.connection() as conn:
        secret, new, old = await store.rotate(conn, key_id, change, person.actor, grace_s)
    answer = {"key": jsonable(new), "secret": secret, "replaced": jsonable(old)}
    return JSONResponse(answer, status_code=201)


async def revoke_key(request: Request) -> JSONResponse:
    person = await require(request, ADMIN)
    change = await body_of(request, KeyRevocation)
    key_id = store.key_id_of(request.path_params["key_id"])
    async with services(request).pool.connection() as conn:
        row = await store.revoke(conn, key_id, change, person.actor)
    return JSONResponse(jsonable(row))


API_KEY_ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/ops/v1/api-keys", keys, ["GET", "POST"]),
    ("/ops/v1/api-keys/{key_id}/rotate", rotate_key, ["POST"]),
    ("/ops/v1/api-keys/{key_id}/revoke", revoke_key, ["POST"]),
]
