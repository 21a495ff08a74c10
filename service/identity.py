"""People, authenticated: an access token (a JWT) from the OpenID issuer, verified
here, becomes a `Principal` (service/principals.py) with the roles it may use.

The issuer's keys come from the `jwks_uri` of its discovery document
(`OIDC_ISSUER/.well-known/openid-configuration`). They are cached for an hour, and
fetched again when a token names a key id the set lacks (the issuer rotated its
keys), at most once a minute, so that tokens with made-up key ids cannot make us
hammer the issuer. A token is a person's when its signature verifies with one of
those keys (asymmetric algorithms only: never `none`, never a shared secret) and
its `iss`, `aud` (OIDC_AUDIENCE, by default the client id), `exp` and `nbf` hold,
with OIDC_LEEWAY_S of clock skew. A token carrying a `nonce` or an `at_hash` is
an ID token, which proves a sign-in to the console but is no credential for the
API: refused.

Roles: the issuer's groups (the OIDC_ROLES_CLAIM claim, mapped by
OIDC_GROUP_ROLES) and the service's own grants (service/people.py), read on every
request. Anything wrong is a 401 that says what, never the token; a person
without the role is a 403.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from starlette.requests import Request

from engine.journal import Conn
from service.api import services
from service.models import BadRequest
from service.people import granted_roles
from service.principals import Principal
from service.settings import Settings

log = logging.getLogger("payment.identity")
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
KEYS_MAX_AGE_S = 3600.0
REFETCH_AT_MOST_EVERY_S = 60.0
RETRY_AFTER_FAILURE_S = 5.0
MAX_TOKEN_BYTES = 16 * 1024
FETCH_TIMEOUT_S = 5.0


class IssuerUnavailable(Exception):
    """The issuer's discovery document or keys could not be fetched."""


def unauthorized(why: str) -> BadRequest:
    return BadRequest(401, "unauthorized", why)


class IssuerKeys:
    """The issuer's discovery document and signing keys, fetched on first use."""

    def __init__(
        self,
        issuer: str,
        http: httpx.AsyncClient,
        refetch_at_most_every_s: float = REFETCH_AT_MOST_EVERY_S,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._http = http
        self._refetch_every_s = refetch_at_most_every_s
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched_at = self._failed_at = float("-inf")
        self._lock = asyncio.Lock()

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            document = await self._get(f"{self.issuer}/.well-known/openid-configuration")
            if str(document.get("issuer", "")).rstrip("/") != self.issuer:
                raise IssuerUnavailable("the discovery document names another issuer")
            self._metadata = document
        return self._metadata

    async def key_set(self, *, unknown_kid: bool = False) -> KeySet:
        """The keys: fetched when missing or stale, or for an unknown key id; after a
        failed fetch, not tried again for RETRY_AFTER_FAILURE_S (stale keys serve)."""
        async with self._lock:
            now = time.monotonic()
            age = now - self._fetched_at
            due = self._keys is None or age > KEYS_MAX_AGE_S
            due |= unknown_kid and age > self._refetch_every_s
            if due and now - self._failed_at > RETRY_AFTER_FAILURE_S:
                try:
                    self._keys, self._fetched_at = await self._fetch_keys(), now
                except IssuerUnavailable:
                    self._failed_at = now
                    if self._keys is None:
                        raise
            if self._keys is None:
                raise IssuerUnavailable("no keys yet")
            return self._keys

    async def _fetch_keys(self) -> KeySet:
        jwks = await self._get(str((await self.metadata()).get("jwks_uri", "")))
        try:
            return KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise IssuerUnavailable(f"unreadable keys: {type(exc).__name__}") from None

    async def _get(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, timeout=FETCH_TIMEOUT_S)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("issuer %s: %s", self.issuer, type(exc).__name__)
            raise IssuerUnavailable(type(exc).__name__) from None
        if not isinstance(document, dict):
            raise IssuerUnavailable("not a JSON object")
        return document


class Identity:
    """Tokens of one issuer, checked for one audience, made into principals."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        assert settings.oidc_issuer is not None
        self.settings = settings
        self.keys = IssuerKeys(settings.oidc_issuer, http)

    async def claims(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token this issuer signed for `audience`, or a 401."""
        if len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise unauthorized("the token is not a JWT")
        try:
            jws.extract_compact(token.encode())
        except (JoseError, ValueError, TypeError, KeyError):
            raise unauthorized("the token is not a JWT") from None
        try:
            try:
                decoded = jwt.decode(token, await self.keys.key_set(), algorithms=ALGORITHMS)
            except InvalidKeyIdError:
                keys = await self.keys.key_set(unknown_kid=True)
                decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
            self._registry(audience).validate(decoded.claims)
        except JoseError as exc:
            raise unauthorized(f"the token was refused: {exc.error}") from None
        except (ValueError, TypeError, KeyError):  # a header joserfc could not read
            raise unauthorized("the token was refused: malformed") from None
        return decoded.claims

    def _registry(self, audience: str) -> jwt.JWTClaimsRegistry:
        return jwt.JWTClaimsRegistry(
            leeway=self.settings.oidc_leeway_s,
            iss={"essential": True, "value": self.keys.issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
        )

    async def person(self, conn: Conn, token: str) -> Principal:
        """The person an API access token names, with their roles."""
        claims = await self.claims(token, self.settings.oidc_token_audience)
        if "nonce" in claims or "at_hash" in claims:
            raise unauthorized("an ID token is not an access token")
        return await self.principal(conn, claims)

    async def principal(self, conn: Conn, claims: Mapping[str, Any]) -> Principal:
        """Who verified claims name, with the claim's roles and the granted ones."""
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        verified_email = email if claims.get("email_verified") is True else None
        claimed = roles_from_groups(
            claims.get(self.settings.oidc_roles_claim), self.settings.oidc_group_roles
        )
        granted = await granted_roles(conn, self.keys.issuer, str(claims["sub"]), verified_email)
        return Principal(self.keys.issuer, str(claims["sub"]), email, claimed | granted)


def roles_from_groups(value: object, group_roles: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The roles a groups claim maps to: a list of names, or one space-separated string."""
    if isinstance(value, str):
        groups = set(value.split())
    elif isinstance(value, list):
        groups = {g for g in value if isinstance(g, str)}
    else:
        groups = set()
    return frozenset(role for group, role in group_roles if group in groups)


def identity(request: Request) -> Identity:
    """This app's Identity, built on first use (None configured: nobody signs in)."""
    found = getattr(request.app.state, "identity", None)
    if found is None:
        svc = services(request)
        if svc.settings.oidc_issuer is None:
            raise unauthorized("no identity provider is configured (OIDC_ISSUER)")
        found = request.app.state.identity = Identity(svc.settings, svc.http)
    assert isinstance(found, Identity)
    return found


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("sign in: send Authorization: Bearer <access token>")
    return token.strip()


async def require(request: Request, role: str) -> Principal:
    """The person calling, who must hold `role`: else a 401 (who?) or a 403 (not allowed)."""
    token = bearer_token(request)
    try:
        async with services(request).pool.connection() as conn:
            principal = await identity(request).person(conn, token)
    except IssuerUnavailable:
        raise BadRequest(
            503, "issuer_unavailable", "the identity provider cannot be reached; retry later"
        ) from None
    if not principal.may(role):
        raise BadRequest(403, "forbidden", f"this needs the {role} role")
    return principal
