"""What every console page shares: the templates, who is looking (the session's
person, with the roles granted now), and the form reader."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from service import console_auth as auth
from service.api import read_limited, services
from service.people import break_glass_enabled, granted_roles
from service.principals import RESOLVER, Principal
from service.settings import Settings
from workflows.money import format_minor

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates" / "console"))
TEMPLATES.env.filters["money"] = lambda row: format_minor(row["amount_minor"], row["currency"])
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Visitor:
    """A signed-in person looking at the console."""

    session: auth.Session
    person: Principal

    def context(self, request: Request) -> dict[str, Any]:
        """What the templates need: who, the CSRF token, and which buttons to show."""
        csrf = self.session.csrf(services(request).settings)
        return {"person": self.person, "csrf": csrf, "may_resolve": self.person.may(RESOLVER)}


async def visitor(request: Request) -> Visitor | None:
    """The session's person with the roles the service grants now, or None."""
    settings = services(request).settings
    found = auth.session(settings, request.cookies.get(auth.COOKIE))
    if found is None or not _still_trusted(settings, found.principal):
        return None
    person = found.principal
    if person.via == "oidc":
        email = person.email if found.email_verified else None
        async with services(request).pool.connection() as conn:
            granted = await granted_roles(conn, person.issuer, person.subject, email)
        person = dataclasses.replace(person, roles=person.roles | granted)
    return Visitor(found, person)


def _still_trusted(settings: Settings, person: Principal) -> bool:
    """A session outlives no change of issuer, and break-glass's none of break-glass
    being turned off."""
    if person.via == "break_glass":
        return break_glass_enabled(settings) and person.subject == settings.break_glass_name
    return settings.oidc_issuer is not None and person.issuer == settings.oidc_issuer.rstrip("/")


def page(
    request: Request,
    name: str,
    context: dict[str, Any],
    status: int = 200,
    seen_by: Visitor | None = None,
) -> Response:
    extra = seen_by.context(request) if seen_by else {}
    return TEMPLATES.TemplateResponse(request, name, {**context, **extra}, status_code=status)


def refused(request: Request, why: str, status: int, seen_by: Visitor | None) -> Response:
    """The page that says why nothing was done."""
    return page(request, "refused.html", {"why": why}, status, seen_by)


async def signed_post(request: Request, role: str) -> tuple[Visitor, dict[str, str]] | Response:
    """The visitor and form of a console POST that needs `role`, or the page that
    refuses it (nothing changed): signed in, the session's CSRF token, the role."""
    found = await visitor(request)
    if found is None:
        return refused(request, "Sign in first.", 401, None)
    form = await form_of(request)
    if not form.get("csrf") or form["csrf"] != found.session.csrf(services(request).settings):
        return refused(request, "The form expired: reload it.", 403, found)
    if not found.person.may(role):
        return refused(request, f"This needs the {role} role.", 403, found)
    return found, form


async def form_of(request: Request) -> dict[str, str]:
    """An HTML form's fields (application/x-www-form-urlencoded, size-limited)."""
    if request.headers.get("content-type", "").split(";")[0] != FORM:
        return {}
    body = await read_limited(request, services(request).settings.max_body_bytes)
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items()}
