"""The support console's cookies, signed with CONSOLE_SECRET (HMAC-SHA256).

- The session (`console_session`: HttpOnly, Secure, SameSite=Strict, 8 h; 1 h for
  break-glass) names the person the issuer's ID token named: issuer, subject,
  email, the roles its groups gave, and how they signed in. The roles the service
  grants are read again on every request (service/people.py), so taking a grant
  away takes effect at once. Every POST carries the session's CSRF token.
- The sign-in in progress (`console_signin`: SameSite=Lax, so that it comes back
  with the issuer's redirect, 10 min) keeps the OAuth `state`, the OIDC `nonce`
  and the PKCE verifier, checked at the callback.

Nothing is stored server-side. With CONSOLE_SECRET unset the key is random per
process: sessions end with the process, and several API processes need the setting.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from service.principals import Principal
from service.settings import Settings

COOKIE = "console_session"
SIGN_IN_COOKIE = "console_signin"
LIFETIME_S = 8 * 3600
BREAK_GLASS_LIFETIME_S = 3600
SIGN_IN_LIFETIME_S = 600
_PROCESS_KEY = secrets.token_bytes(32)  # only while CONSOLE_SECRET is unset


@dataclass(frozen=True)
class Session:
    principal: Principal  # the roles the issuer's groups gave at sign-in (grants come later)
    email_verified: bool
    raw: str  # the cookie value: the CSRF token is bound to it

    def csrf(self, settings: Settings) -> str:
        return _sign(settings, f"csrf:{self.raw}")


def session_cookie(settings: Settings, principal: Principal, email_verified: bool) -> str:
    lifetime = BREAK_GLASS_LIFETIME_S if principal.via == "break_glass" else LIFETIME_S
    body = {
        "iss": principal.issuer,
        "sub": principal.subject,
        "email": principal.email,
        "ev": email_verified,
        "roles": sorted(principal.roles),
        "via": principal.via,
        "exp": int(time.time()) + lifetime,
        "n": secrets.token_hex(8),  # two sign-ins never share a CSRF token
    }
    return _seal(settings, "session", body)


def session(settings: Settings, cookie: str | None) -> Session | None:
    body = _open(settings, "session", cookie)
    if body is None:
        return None
    try:
        roles = frozenset(str(r) for r in body["roles"])
        email = None if body["email"] is None else str(body["email"])
        principal = Principal(str(body["iss"]), str(body["sub"]), email, roles, str(body["via"]))
        return Session(principal, bool(body["ev"]), str(cookie))
    except (KeyError, TypeError):
        return None


def sign_in_cookie(settings: Settings, state: str, nonce: str, verifier: str) -> str:
    body = {"state": state, "nonce": nonce, "verifier": verifier}
    return _seal(settings, "sign-in", {**body, "exp": int(time.time()) + SIGN_IN_LIFETIME_S})


def sign_in(settings: Settings, cookie: str | None) -> dict[str, str] | None:
    """The state, nonce and verifier of the sign-in this browser started, if any."""
    body = _open(settings, "sign-in", cookie)
    if body is None or not all(isinstance(body.get(k), str) for k in ("state", "nonce")):
        return None
    return {k: str(body[k]) for k in ("state", "nonce", "verifier")}


def _seal(settings: Settings, purpose: str, body: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
    return f"{payload}.{_sign(settings, f'{purpose}:{payload}')}"


def _open(settings: Settings, purpose: str, cookie: str | None) -> dict[str, Any] | None:
    """The body of a cookie this service sealed for `purpose`, unexpired; else None."""
    if not cookie or cookie.count(".") != 1 or len(cookie) > 4096:
        return None
    payload, signature = cookie.split(".")
    if not hmac.compare_digest(_sign(settings, f"{purpose}:{payload}"), signature):
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(payload.encode()))
        expires = int(body["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    return body if isinstance(body, dict) and expires >= time.time() else None


def _sign(settings: Settings, message: str) -> str:
    secret = settings.console_secret.get_secret_value().encode() or _PROCESS_KEY
    key = hashlib.sha256(b"payment-service console:" + secret).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
