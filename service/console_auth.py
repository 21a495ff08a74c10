"""The support console's session: an ops token exchanged at a login form for a
signed cookie (HttpOnly, SameSite=Strict, Secure), and a CSRF token per session
that every POST must carry. Nothing is stored server-side: the cookie names the
operator and which ops token signed it, so rotating that token ends its sessions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from pydantic import SecretStr

COOKIE = "console_session"
LIFETIME_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    operator: str
    token_index: int
    expires: int
    raw: str  # the cookie value: the CSRF token is bound to it

    def csrf(self, tokens: tuple[SecretStr, ...]) -> str:
        return _sign(tokens[self.token_index], f"csrf:{self.raw}")


def login(tokens: tuple[SecretStr, ...], offered: str, operator: str) -> str | None:
    """The cookie value for a valid ops token, else None."""
    for index, token in enumerate(tokens):
        if hmac.compare_digest(token.get_secret_value().encode(), offered.encode()):
            body = json.dumps({"op": operator, "k": index, "exp": int(time.time()) + LIFETIME_S})
            payload = base64.urlsafe_b64encode(body.encode()).decode()
            return f"{payload}.{_sign(token, payload)}"
    return None


def session(tokens: tuple[SecretStr, ...], cookie: str | None) -> Session | None:
    if not cookie or cookie.count(".") != 1:
        return None
    payload, signature = cookie.split(".")
    try:
        body = json.loads(base64.urlsafe_b64decode(payload.encode()))
        index, operator, expires = int(body["k"]), str(body["op"]), int(body["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    if not 0 <= index < len(tokens) or expires < time.time():
        return None
    if not hmac.compare_digest(_sign(tokens[index], payload), signature):
        return None
    return Session(operator, index, expires, cookie)


def _sign(token: SecretStr, message: str) -> str:
    key = hashlib.sha256(b"payment-service console:" + token.get_secret_value().encode()).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
