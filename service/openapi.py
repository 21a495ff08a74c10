"""The OpenAPI document served at /openapi.json (hand-written: the API is small)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["order_id", "merchant_id", "amount", "currency", "cascade"],
    "properties": {
        "order_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:\\-]{0,63}$"},
        "merchant_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:\\-]{0,63}$"},
        "amount": {
            "type": "string",
            "description": "Strict decimal string within the currency's exponent, e.g. 10.50",
            "pattern": "^(0|[1-9][0-9]{0,17})(\\.[0-9]{1,3})?$",
        },
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "cascade": {
            "type": "array",
            "minItems": 1,
            "maxItems": 32,
            "uniqueItems": True,
            "items": {"type": "string"},
            "description": "Provider names, cheapest first",
        },
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
        for c in codes
    }


def _ok(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "payment-service", "version": "0.1.0"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": _ERROR, "WithdrawalRequest": _REQUEST},
    },
    "paths": {
        "/v1/withdrawals": {
            "post": {
                "summary": "Submit a withdrawal (idempotent on order_id)",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _REQUEST}},
                },
                "responses": {
                    "201": _ok("created"),
                    "200": _ok("identical replay"),
                    **_errors(400, 401, 409, 413, 422),
                },
            }
        },
        "/v1/withdrawals/{ident}": {
            "get": {
                "summary": "A withdrawal with its tasks (by id or order_id)",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "ident", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": _ok("the withdrawal"), **_errors(401, 404)},
            }
        },
        "/v1/withdrawals/{ident}/events": {
            "get": {
                "summary": "The audit timeline",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "ident", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": _ok("events"), **_errors(401, 404)},
            }
        },
        "/webhooks/{provider}": {
            "post": {
                "summary": "Provider webhook, signed per Standard Webhooks",
                "parameters": [
                    {
                        "name": "provider",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "webhook-id",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "webhook-timestamp",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "webhook-signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "202": _ok("stored"),
                    "200": _ok("duplicate"),
                    **_errors(400, 401, 404, 413),
                },
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok("alive")}}},
        "/readyz": {
            "get": {"summary": "Readiness", "responses": {"200": _ok("ready"), **_errors(503)}}
        },
    },
}
