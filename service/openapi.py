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


_IDENT = {"name": "ident", "in": "path", "required": True, "schema": {"type": "string"}}
_OPERATOR = {"operator": {"type": "string"}, "reason": {"type": "string"}}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": required,
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ops_get(summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": [{"ops": []}],
            "responses": {"200": _ok(summary), **_errors(401)},
        }
    }


def _ops_post(summary: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"ops": []}],
            "requestBody": _body(properties, required),
            "responses": {
                "200": _ok("done"),
                "202": _ok("accepted"),
                **_errors(401, 404, 409, 422),
            },
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "payment-service", "version": "0.1.0"},
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "API_TOKENS"},
            "ops": {"type": "http", "scheme": "bearer", "description": "OPS_TOKENS"},
        },
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
        "/v1/withdrawals/{ident}/cancel": {
            "post": {
                "summary": "Cancel a withdrawal (an order already at a provider runs to its end)",
                "security": [{"bearer": []}],
                "parameters": [_IDENT],
                "requestBody": _body({"reason": {"type": "string"}}, []),
                "responses": {"202": _ok("cancellation requested"), **_errors(401, 404, 409, 422)},
            }
        },
        "/ops/v1/manual-checks": _ops_get("Tasks awaiting a manual check"),
        "/ops/v1/dead-letters": _ops_get("Dead letters not yet replayed"),
        "/ops/v1/attention": _ops_get("Withdrawals flagged for a person"),
        "/ops/v1/tasks/{task_id}/resolve": _ops_post(
            "Resolve a manual check",
            {"outcome": {"enum": ["positive", "negative"]}, **_OPERATOR},
            ["outcome", "operator", "reason"],
        ),
        "/ops/v1/tasks/{task_id}/cancel": _ops_post(
            "Cancel one task (skip that provider)", _OPERATOR, ["operator", "reason"]
        ),
        "/ops/v1/withdrawals/{ident}/cancel": _ops_post(
            "Cancel a withdrawal", _OPERATOR, ["operator", "reason"]
        ),
        "/ops/v1/dead-letters/{dead_letter_id}/replay": _ops_post(
            "Replay a dead letter", {"operator": {"type": "string"}}, ["operator"]
        ),
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": _ok("text")}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok("alive")}}},
        "/readyz": {
            "get": {"summary": "Readiness", "responses": {"200": _ok("ready"), **_errors(503)}}
        },
    },
}
