"""Who runs a changing command of `python -m service.ops`: the person whose access
token it was given (`--token`, or better OPS_ACCESS_TOKEN, which `ps` does not
show), verified like the ops API's (service/identity.py), holding the role the
command needs. A typed name proves nothing, so none is asked for."""

from __future__ import annotations

import os

from service.identity import Identity, IssuerUnavailable
from service.models import BadRequest
from service.principals import Principal
from service.wiring import Services

HOW = (
    "pass an access token from the identity provider in OPS_ACCESS_TOKEN (or --token);"
    " in the sandbox: OPS_ACCESS_TOKEN=$(python -m sandbox.issuer token ana)"
)


async def signed_in(svc: Services, token: str | None, role: str) -> Principal:
    """The person, or SystemExit saying why not (nothing is changed)."""
    token = (token or os.environ.get("OPS_ACCESS_TOKEN", "")).strip()
    if not token:
        raise SystemExit(f"error: sign in: {HOW}")
    if svc.settings.oidc_issuer is None:
        raise SystemExit("error: OIDC_ISSUER is not set: nobody can sign in")
    async with svc.pool.connection() as conn:
        try:
            person = await Identity(svc.settings, svc.http).person(conn, token)
        except BadRequest as exc:
            raise SystemExit(f"error: {exc.message}; {HOW}") from None
        except IssuerUnavailable:
            raise SystemExit("error: the identity provider cannot be reached") from None
    if not person.may(role):
        raise SystemExit(f"error: {person.actor} lacks the {role} role")
    return person
