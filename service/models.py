"""HTTP edge models (pydantic). Inside the service only frozen values travel."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from activities import strict_json
from workflows.money import (
    InvalidAmount,
    amount_pattern,
    currencies_by_exponent,
    is_known_currency,
    known_currencies,
    parse_amount,
)

ID_PATTERN = _ID = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"
_CURRENCIES: list[JsonValue] = list(known_currencies())
IDENT = re.compile(_ID)  # an order_id; our withdrawal ids (UUIDs) match it too


class BadRequest(Exception):
    """A 4xx with a machine code and field details; the message is safe to return."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.retry_after_s = retry_after_s  # a 429's wait: in the body and `Retry-After`

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        if self.retry_after_s is not None:
            error["retry_after_s"] = self.retry_after_s
        return {"error": error}


def withdrawal_ident(request: Any) -> str:
    """The `{ident}` path parameter: our id or cascade-core's order_id. Anything
    else (a NUL, a space, 200 characters) cannot name a withdrawal: a 404."""
    ident = str(request.path_params["ident"])
    if not IDENT.fullmatch(ident):
        raise BadRequest(404, "not_found", "no such withdrawal")
    return ident


def _amount_per_exponent() -> dict[str, JsonValue]:
    """The schema's way of saying that the amount's decimals depend on the currency."""
    cases: list[JsonValue] = [
        {
            "properties": {
                "currency": {"enum": list[JsonValue](currencies)},
                "amount": {"pattern": amount_pattern(exp)},
            }
        }
        for exp, currencies in sorted(currencies_by_exponent().items())
    ]
    return {"anyOf": cases}


class WithdrawalRequest(BaseModel):
    """A withdrawal from cascade-core: its eligible providers, cheapest first."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, json_schema_extra=_amount_per_exponent()
    )

    order_id: str = Field(pattern=_ID)
    merchant_id: str = Field(pattern=_ID)
    # currency before amount: fields are validated in this order, and the amount's
    # validator needs the currency to tell how many decimals it may have.
    currency: str = Field(json_schema_extra={"enum": _CURRENCIES})
    amount: str = Field(
        max_length=24,
        description="Strict decimal string within the currency's exponent, e.g. 10.50",
        # Described, not enforced here: parse_amount (below) is the rule.
        json_schema_extra={"pattern": amount_pattern(max(currencies_by_exponent()))},
    )
    cascade: list[str] = Field(
        min_length=1,
        max_length=32,
        json_schema_extra={"uniqueItems": True},
        description="Provider names, cheapest first",
    )

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not is_known_currency(value):
            raise ValueError("currency must be an ISO 4217 code we support, e.g. EUR")
        return value

    @field_validator("cascade")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("cascade lists a provider twice")
        return value

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: str, info: ValidationInfo) -> str:
        # A field validator, so that the 422 names `amount`. Without a valid
        # currency (its own error), the widest exponent: only the shape is judged.
        currency = info.data.get("currency", "KWD")
        try:
            minor = parse_amount(value, currency)
        except InvalidAmount as exc:
            # A custom error: its message is ours alone, without "Value error, ".
            raise PydanticCustomError("invalid_amount", str(exc)) from None
        if minor == 0:
            raise PydanticCustomError("invalid_amount", "amount must be greater than zero")
        return value

    @property
    def amount_minor(self) -> int:
        return parse_amount(self.amount, self.currency)

    def fingerprint(self) -> str:
        """Hash of the normalised request, to tell a replay from a conflicting reuse."""
        canonical = json.dumps(
            {**self.model_dump(), "amount": self.amount_minor},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def invalid(exc: ValidationError) -> BadRequest:
    """A 422 that names each field that is wrong (never echoing the input)."""
    details = [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    return BadRequest(422, "invalid_request", "request is invalid", details)


def parse_json(body: bytes) -> Any:
    """Strict JSON (activities.strict_json): a 400 when it is not JSON, a 422 naming
    the field when a string is one PostgreSQL cannot store."""
    try:
        return strict_json.loads(body)
    except strict_json.NotStorable as exc:
        details = [{"field": exc.field, "message": exc.message}]
        raise BadRequest(422, "invalid_request", "request is invalid", details) from None
    except strict_json.NotJson:
        raise BadRequest(400, "invalid_json", "body is not valid JSON") from None


def parse_withdrawal(body: bytes, known_providers: set[str], max_cascade: int) -> WithdrawalRequest:
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise BadRequest(422, "invalid_request", "body must be a JSON object")
    try:
        request = WithdrawalRequest.model_validate(payload)
    except ValidationError as exc:
        raise invalid(exc) from None
    unknown = [p for p in request.cascade if p not in known_providers]
    if unknown or len(request.cascade) > max_cascade:
        message = f"unknown providers: {', '.join(unknown)}" if unknown else "cascade too long"
        raise BadRequest(
            422, "invalid_request", message, [{"field": "cascade", "message": message}]
        )
    return request


# Free text that is stored: PostgreSQL refuses NUL (checked again by parse_json).
_TEXT = r"^[^\x00]*$"


# Who acts is the signed-in person (service/identity.py). A typed name proved
# nothing: clients that still send `operator` are accepted, and it is ignored.
_IGNORED_OPERATOR = Field(
    None,
    max_length=100,
    pattern=_TEXT,
    deprecated=True,
    description="Ignored: the audit trail names the signed-in person",
)


class _OperatorSays(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    operator: str | None = _IGNORED_OPERATOR
    reason: str = Field(min_length=1, max_length=500, pattern=_TEXT)


class Resolution(_OperatorSays):
    """A person's decision on a manual check: positive commits, negative releases."""

    outcome: Literal["positive", "negative"]


class CircuitOverride(_OperatorSays):
    """An admin forces a provider's circuit open or closed, or back to automatic."""

    state: Literal["open", "closed", "auto"]


class Cancellation(_OperatorSays):
    """A person cancels a task or a withdrawal (the safe rule applies)."""


class Replay(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    operator: str | None = _IGNORED_OPERATOR


class CoreCancellation(BaseModel):
    """cascade-core cancels a withdrawal."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    reason: str = Field("requested by cascade-core", min_length=1, max_length=500, pattern=_TEXT)


class WebhookOrder(BaseModel):
    id: str | None = Field(None, description="The provider's own order id")
    reference: str = Field(description="Our task id, sent as the order's reference")
    status: Literal["pending", "succeeded", "failed"]


class WebhookBody(BaseModel):
    """A provider's order update, signed per Standard Webhooks. Described here; the
    provider adapter (activities/providers.py) is what parses and checks it."""

    type: str = "order.updated"
    data: WebhookOrder
