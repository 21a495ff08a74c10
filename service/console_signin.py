"""Signing in to the console: the OpenID issuer's authorization code flow with PKCE
(authlib's OAuth2 client), and break-glass.

`/console/sign-in` sends the browser to the issuer with a fresh `state`, `nonce`
and PKCE challenge, kept in a signed cookie (service/console_auth.py). The
issuer sends it back to `/console/callback`, where the state must match, the code
is exchanged (with the verifier) for tokens, and the ID token must verify
(service/identity.py: signature, issuer, audience = the client id, expiry) and
carry our nonce. Its subject, email and groups make the session.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import warnings
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.deprecate import AuthlibDeprecationWarning
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service import console_auth as auth

# authlib 1.9 warns at import that its httpx integration will move to httpx2; we
# pin httpx, and a warning printed before the JSON logs start would be the one
# line of a process's log that is not JSON.
# (authlib.deprecate sets its warning to "always" when first imported: import it
# first, so that the filter below comes after it and wins.)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from service import people
from service.api import services
from service.console_pages import form_of, page
from service.identity import IssuerUnavailable, identity
from service.models import BadRequest
from service.principals import Principal
from service.settings import Settings

log = logging.getLogger("payment.console")


def _client(settings: Settings, redirect_uri: str) -> AsyncOAuth2Client:
    secret = settings.oidc_client_secret
    return AsyncOAuth2Client(
        client_id=settings.oidc_client_id,
        client_secret=secret.get_secret_value() if secret else None,
        token_endpoint_auth_method="client_secret_basic" if secret else "none",
        scope=settings.oidc_scopes,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        timeout=10,
    )


def _redirect_uri(request: Request, settings: Settings) -> str:
    return settings.oidc_redirect_url or f"{str(request.base_url).rstrip('/')}/console/callback"


async def login_page(request: Request) -> Response:
    return _login(request)


def _login(request: Request, error: str | None = None, status: int = 200) -> Response:
    settings = services(request).settings
    context = {
        "issuer": settings.oidc_issuer,
        "break_glass": people.break_glass_enabled(settings),
        "error": error,
    }
    return page(request, "login.html", context, status)


async def start(request: Request) -> Response:
    """Off to the issuer, with a state, a nonce and a PKCE challenge to come back with."""
    settings = services(request).settings
    try:
        endpoint = (await identity(request).keys.metadata())["authorization_endpoint"]
    except (BadRequest, IssuerUnavailable, KeyError):
        return _login(request, "The identity provider cannot be reached: try again.", 503)
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier = generate_token(64)  # PKCE: 43 to 128 characters of the unreserved set
    async with _client(settings, _redirect_uri(request, settings)) as client:
        url, _ = client.create_authorization_url(
            str(endpoint), state=state, nonce=nonce, code_verifier=verifier
        )
    response = RedirectResponse(url, status_code=303)
    cookie = auth.sign_in_cookie(settings, state, nonce, verifier)
    # Lax: it must come back with the issuer's top-level redirect to our callback
    response.set_cookie(
        auth.SIGN_IN_COOKIE,
        cookie,
        max_age=auth.SIGN_IN_LIFETIME_S,
        httponly=True,
        secure=True,
        samesite="lax",
        path="/console",
    )
    return response


async def callback(request: Request) -> Response:
    settings = services(request).settings
    started = auth.sign_in(settings, request.cookies.get(auth.SIGN_IN_COOKIE))
    offered = request.query_params.get("state", "")
    if started is None or not hmac.compare_digest(offered.encode(), started["state"].encode()):
        return _login(request, "That sign-in expired or was not started here: start again.", 401)
    code = request.query_params.get("code")
    if not code:
        why = request.query_params.get("error", "no code")[:100]
        return _login(request, f"The identity provider said no ({why}).", 401)
    try:
        principal, verified = await _person(request, started, code)
    except (OAuthError, httpx.HTTPError, IssuerUnavailable, KeyError, TypeError) as exc:
        log.warning("console sign-in failed: %s", type(exc).__name__)
        return _login(request, "The sign-in could not be completed: start again.", 401)
    except BadRequest as exc:
        return _login(request, f"The sign-in was refused: {exc.message}.", 401)
    return await _signed_in(request, principal, verified)


async def _person(request: Request, started: dict[str, str], code: str) -> tuple[Principal, bool]:
    """The person the issuer's ID token names, once it verified and carries our nonce."""
    svc = services(request)
    who = identity(request)
    token_endpoint = str((await who.keys.metadata())["token_endpoint"])
    async with _client(svc.settings, _redirect_uri(request, svc.settings)) as client:
        tokens = await client.fetch_token(
            token_endpoint, code=code, code_verifier=started["verifier"]
        )
    claims = await who.claims(str(tokens["id_token"]), svc.settings.oidc_client_id)
    if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), started["nonce"].encode()):
        raise BadRequest(401, "unauthorized", "the ID token is not for this sign-in")
    async with svc.pool.connection() as conn:
        return await who.principal(conn, claims), claims.get("email_verified") is True


async def break_glass(request: Request) -> Response:
    """The local admin, when enabled: every sign-in audited, announced and counted."""
    settings = services(request).settings
    form = await form_of(request)
    admin = people.break_glass_admin(settings, form.get("name", ""), form.get("password", ""))
    if admin is None:
        log.warning("break-glass sign-in refused")
        return _login(request, "Break-glass is off, or that name and password are wrong.", 401)
    where = request.client.host if request.client else ""
    return await _signed_in(request, admin, False, {"from": where})


async def _signed_in(
    request: Request, principal: Principal, verified: bool, detail: dict[str, Any] | None = None
) -> Response:
    settings = services(request).settings
    async with services(request).pool.connection() as conn:
        await people.record_sign_in(conn, principal, {"via": principal.via, **(detail or {})})
    # A page, not a redirect: a SameSite=Strict cookie set at the end of a redirect
    # chain that began at the issuer (another site) would not come with the next page.
    response = page(request, "signed_in.html", {"who": principal.actor})
    cookie = auth.session_cookie(settings, principal, verified)
    response.set_cookie(
        auth.COOKIE,
        cookie,
        max_age=auth.LIFETIME_S,
        httponly=True,
        secure=True,
        samesite="strict",
        path="/console",
    )
    response.delete_cookie(auth.SIGN_IN_COOKIE, path="/console")
    return response


async def logout(request: Request) -> Response:
    """Ends this browser's session (the issuer's own session is the issuer's)."""
    settings = services(request).settings
    found = auth.session(settings, request.cookies.get(auth.COOKIE))
    if found is not None and (await form_of(request)).get("csrf") != found.csrf(settings):
        return _login(request, "That sign-out did not come from this console.", 403)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/console")
    return response
