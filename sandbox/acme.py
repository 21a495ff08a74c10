"""Acme's wire shapes, for the simulated providers with `protocol = "acme"`.

The simulator keeps one kind of order and one set of behaviours for every
provider; only what goes on the wire differs. Acme (docs/protocols.md,
"Provider adapters") authenticates with `X-Acme-Key`, takes amounts in minor
units, answers `{"order": {"id", "merchant_reference", "state"}}` or
`{"error_code", "message"}`, and signs its webhooks with `X-Acme-Timestamp` and
`X-Acme-Signature` (activities/acme.py, the payment-service side, signs the
same way).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from sandbox.web import BadBody
from workflows.money import InvalidAmount, format_minor, is_currency

KEY_HEADER = "x-acme-key"
# The sandbox's order statuses as Acme's states.
STATES = {"pending": "PROCESSING", "succeeded": "PAID", "failed": "REJECTED"}
MAX_REFERENCE_LENGTH = 200
MAX_MINOR = 10**15


def key_ok(request: Request, expected: str) -> bool:
    """Constant-time check of the `X-Acme-Key` header."""
    return hmac.compare_digest(request.headers.get(KEY_HEADER, "").encode(), expected.encode())


def error(status: int, code: str, message: str = "") -> JSONResponse:
    body = {"error_code": code.upper(), "message": message or code}
    return JSONResponse(body, status_code=status)


def from_reference_error(body: dict[str, Any]) -> dict[str, str]:
    """The reference error `{"error": {"code", "message"}}` in Acme's shape."""
    detail = body.get("error")
    detail = detail if isinstance(detail, dict) else {}
    code = str(detail.get("code", "error"))
    return {"error_code": code.upper(), "message": str(detail.get("message", code))}


def order(order_json: dict[str, Any], wire_state: str | None = None) -> dict[str, Any]:
    """A reference order `{"id", "reference", "status"}` as Acme's `{"order": ...}`;
    `wire_state` (an admin override) is sent as it is, known to Acme or not."""
    state = wire_state if wire_state is not None else STATES[order_json["status"]]
    return {
        "order": {
            "id": order_json["id"],
            "merchant_reference": order_json["reference"],
            "state": state,
        }
    }


def webhook_body(event_id: str, order_json: dict[str, Any], wire_state: str | None) -> bytes:
    """Serialised once: the signature covers exactly these bytes on every attempt."""
    body = {"event_id": event_id, "event": "order.state_changed", **order(order_json, wire_state)}
    return json.dumps(body, separators=(",", ":")).encode()


def create_fields(body: dict[str, Any]) -> tuple[str, str, str]:
    """(reference, decimal amount, currency) of an Acme create body, or BadBody /
    InvalidAmount (a 400: never Acme's DECLINED)."""
    reference = body.get("merchant_reference")
    minor, currency = body.get("amount_minor"), body.get("currency")
    if not isinstance(reference, str) or not 0 < len(reference) <= MAX_REFERENCE_LENGTH:
        limit = MAX_REFERENCE_LENGTH
        raise BadBody(f"merchant_reference must be a string of 1..{limit} characters")
    if not is_currency(currency):
        raise InvalidAmount("currency must be three upper-case letters")
    if not isinstance(minor, int) or isinstance(minor, bool) or not 0 < minor <= MAX_MINOR:
        raise InvalidAmount("amount_minor must be a positive integer")
    assert isinstance(currency, str)
    return reference, format_minor(minor, currency), currency
