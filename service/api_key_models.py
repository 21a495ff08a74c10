"""API keys at the edge: what an admin sends to create, rotate or revoke one, and
what the ops API answers. No answer carries a key's digest; a new key's value is
answered once, at creation (and at rotation), and never again."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from service.models import ID_PATTERN

Scope = Literal["withdrawals:submit", "withdrawals:read", "withdrawals:cancel"]
_TEXT = r"^[^\x00]*$"  # stored text: PostgreSQL refuses NUL
_YEAR_S = 366 * 86400
MerchantId = Annotated[str, Field(pattern=ID_PATTERN)]


def _whole(value: object) -> object:
    """JSON Schema's integer includes 5.0; a string or 5.5 still fails (strict)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The bounds inside, so that the document says minimum and maximum.
Burst = Annotated[Annotated[int, Field(ge=1, le=1_000_000)], BeforeValidator(_whole)]
InFlight = Annotated[Annotated[int, Field(ge=1, le=100_000)], BeforeValidator(_whole)]
Lifetime = Annotated[Annotated[int, Field(ge=1, le=10 * _YEAR_S)], BeforeValidator(_whole)]
Grace = Annotated[Annotated[int, Field(ge=0, le=30 * 86400)], BeforeValidator(_whole)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class KeyLimits(_In):
    """A key's own limits; each one left out is the setting's default."""

    rate_per_s: float | None = Field(None, ge=0.01, le=1_000_000)
    burst: Burst | None = None
    max_in_flight: InFlight | None = None


class KeyCreation(KeyLimits):
    """A new key for a client, with its scopes (and merchants, or every merchant)."""

    client: str = Field(min_length=1, max_length=100, pattern=ID_PATTERN)
    scopes: list[Scope] = Field(min_length=1, max_length=3, json_schema_extra={"uniqueItems": True})
    merchants: list[MerchantId] | None = Field(
        None, min_length=1, max_length=1000, description="None: every merchant"
    )
    expires_in_s: Lifetime | None = Field(None, description="None: never")

    @field_validator("scopes")
    @classmethod
    def _each_once(cls, scopes: list[Scope]) -> list[Scope]:
        if len(set(scopes)) != len(scopes):
            raise ValueError("each scope at most once")
        return scopes


class KeyRotation(_In):
    """A new key for the same client, scopes, merchants and limits; the old one stays
    valid `grace_s` more (None: API_KEY_ROTATION_GRACE_S)."""

    grace_s: Grace | None = None
    expires_in_s: Lifetime | None = Field(None, description="None: never")


class KeyRevocation(_In):
    """Revoke a key now: every API process refuses it from the next request."""

    reason: str = Field(min_length=1, max_length=500, pattern=_TEXT)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiKey(_Out):
    """An API key as lists show it: its public prefix, never its value."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    client: str
    prefix: str
    scopes: list[Scope]
    merchants: list[str] | None
    state: Literal["active", "expired", "revoked"]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    rotated_from: str | None
    rate_per_s: float | None
    burst: int | None
    max_in_flight: int | None


class ApiKeys(_Out):
    keys: list[ApiKey]


class IssuedKey(_Out):
    """A new key: `secret` is its value, shown this once (only a digest is kept)."""

    key: ApiKey
    secret: str
    replaced: ApiKey | None = Field(None, description="On a rotation: the old key")
