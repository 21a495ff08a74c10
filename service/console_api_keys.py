"""The console's API keys page, for admins: every key (prefix, scopes, merchants,
limits, state), a form to make one, and rotate and revoke buttons. A new key's
value is shown once, on a page the browser is told not to keep; only its digest
is stored. Each change is service/api_key_store.py's, audited with the signed-in
person as actor, like the ops API's and the command line's; every POST carries
the session's CSRF token, and a person without the admin role is refused (403).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service import api_key_store as store
from service.api import services
from service.api_key_models import KeyCreation, KeyRevocation, KeyRotation
from service.api_keys import SCOPES
from service.console_pages import Visitor, page, refused, signed_post, visitor
from service.models import BadRequest
from service.principals import ADMIN

_LIST = RedirectResponse("/console/api-keys", status_code=303)
_NO_STORE = {"Cache-Control": "no-store"}  # the page with a key's value


async def keys_page(request: Request) -> Response:
    if (seen_by := await visitor(request)) is None:
        return RedirectResponse("/console/login", status_code=303)
    if not seen_by.person.may(ADMIN):
        return refused(request, "API keys need the admin role.", 403, seen_by)
    async with services(request).pool.connection() as conn:
        keys = await store.list_keys(conn)
    return page(request, "api_keys.html", {"keys": keys, "scopes": SCOPES}, seen_by=seen_by)


async def create(request: Request) -> Response:
    checked = await signed_post(request, ADMIN)
    if isinstance(checked, Response):
        return checked
    seen_by, form = checked
    try:
        spec = _creation(form)
    except (ValueError, OverflowError, ValidationError) as exc:
        return refused(request, f"Not created: {_why(exc)}", 422, seen_by)
    async with services(request).pool.connection() as conn:
        secret, row = await store.create(conn, spec, seen_by.person.actor)
    return _issued(request, seen_by, {"key": row, "secret": secret, "replaced": None})


async def rotate(request: Request) -> Response:
    checked = await signed_post(request, ADMIN)
    if isinstance(checked, Response):
        return checked
    seen_by, form = checked
    svc = services(request)
    try:
        hours = form.get("grace_hours", "").strip()
        change = KeyRotation(grace_s=round(float(hours) * 3600) if hours else None)
    except (ValueError, OverflowError, ValidationError) as exc:
        return refused(request, f"Not rotated: {_why(exc)}", 422, seen_by)
    key_id, actor = request.path_params["key_id"], seen_by.person.actor
    grace_s = svc.settings.api_key_rotation_grace_s
    try:
        async with svc.pool.connection() as conn:
            secret, new, old = await store.rotate(conn, key_id, change, actor, grace_s)
    except BadRequest as exc:
        return refused(request, f"Not rotated: {exc.message}", exc.status, seen_by)
    return _issued(request, seen_by, {"key": new, "secret": secret, "replaced": old})


def _issued(request: Request, seen_by: Visitor, context: dict[str, Any]) -> Response:
    """The page that shows a new key's value, once."""
    response = page(request, "api_key_issued.html", context, seen_by=seen_by)
    response.headers.update(_NO_STORE)
    return response


async def revoke(request: Request) -> Response:
    checked = await signed_post(request, ADMIN)
    if isinstance(checked, Response):
        return checked
    seen_by, form = checked
    try:
        why = KeyRevocation(reason=form.get("reason", "").strip())
    except ValidationError:
        return refused(request, "Not revoked: a reason is required.", 422, seen_by)
    try:
        async with services(request).pool.connection() as conn:
            await store.revoke(conn, request.path_params["key_id"], why, seen_by.person.actor)
    except BadRequest as exc:
        return refused(request, f"Not revoked: {exc.message}", exc.status, seen_by)
    return _LIST


def _creation(form: dict[str, str]) -> KeyCreation:
    """The create form's fields as a KeyCreation (ValueError: a number that is none)."""
    merchants = [m.strip() for m in form.get("merchants", "").split(",") if m.strip()]
    days = _number(form, "expires_in_days", float)
    return KeyCreation.model_validate(
        {
            "client": form.get("client", "").strip(),
            "scopes": [scope for scope in SCOPES if form.get(f"scope:{scope}")],
            "merchants": merchants or None,
            "expires_in_s": None if days is None else round(days * 86400),
            "rate_per_s": _number(form, "rate_per_s", float),
            "burst": _number(form, "burst", int),
            "max_in_flight": _number(form, "max_in_flight", int),
        }
    )


def _number(form: dict[str, str], name: str, kind: type[int] | type[float]) -> Any:
    text = form.get(name, "").strip()
    return kind(text) if text else None


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
    return "numbers only in the number fields"


API_KEY_PAGES: list[tuple[str, Any, list[str]]] = [
    ("/console/api-keys", keys_page, ["GET"]),
    ("/console/api-keys", create, ["POST"]),
    ("/console/api-keys/{key_id}/rotate", rotate, ["POST"]),
    ("/console/api-keys/{key_id}/revoke", revoke, ["POST"]),
]
