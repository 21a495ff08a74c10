"""The OpenAPI document served at /openapi.json, generated from the pydantic models.

Request bodies are the models the handlers validate with (service/models.py) and
answers are the models in service/schemas.py; each operation below says which,
and which error statuses it can answer. Kept as a table rather than a framework:
the handlers stay plain Starlette, and the test suite checks every answer it
receives against this document (tests/openapi_contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from service import schemas as out
from service.models import (
    ID_PATTERN,
    Cancellation,
    CircuitOverride,
    CoreCancellation,
    Replay,
    Resolution,
    WebhookBody,
    WithdrawalRequest,
)

_REF = "#/components/schemas/{model}"
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "ident": {
        "type": "string",
        "pattern": ID_PATTERN,
        "description": "Our withdrawal id or order_id",
    },
    "task_id": {"type": "string", "format": "uuid"},
    "dead_letter_id": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
    "provider": {"type": "string", "description": "A configured provider's name"},
}
_WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_ERROR_MEANING = {
    400: "the body is not valid JSON (or, for a webhook, not a valid order update)",
    401: "missing or invalid credentials or signature",
    404: "no such resource",
    409: "not allowed in the resource's current state",
    413: "the body is too large",
    415: "the body is not application/json",
    422: "the body is invalid: details name each field",
    503: "the database is unavailable; retry after Retry-After seconds",
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    ok: dict[int, type[BaseModel] | str]  # status -> model, or a media type for text
    security: str | None = None  # "bearer" (API_TOKENS) or "ops" (OPS_TOKENS)
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()  # beyond those implied by security, body and path
    headers: tuple[str, ...] = ()
    database: bool = True  # reads or writes PostgreSQL: may answer 503
    field_errors: bool = True  # a body of the wrong shape is a 422 (a webhook's: a 400)

    def error_statuses(self) -> list[int]:
        implied = set(self.errors)
        implied |= {401} if self.security else set()
        implied |= {400, 413, 415} if self.body else set()
        implied |= {422} if self.body and self.field_errors else set()
        implied |= {404} if "{" in self.path else set()
        implied |= {503} if self.database else set()
        return sorted(implied)


OPERATIONS = [
    Operation(
        "post",
        "/v1/withdrawals",
        "Submit a withdrawal (idempotent on order_id)",
        {201: out.Withdrawal, 200: out.Withdrawal},
        "bearer",
        WithdrawalRequest,
        (409,),
    ),
    Operation(
        "get",
        "/v1/withdrawals/{ident}",
        "A withdrawal with its tasks (by id or order_id)",
        {200: out.Withdrawal},
        "bearer",
    ),
    Operation(
        "get",
        "/v1/withdrawals/{ident}/events",
        "The audit timeline",
        {200: out.Events},
        "bearer",
    ),
    Operation(
        "post",
        "/v1/withdrawals/{ident}/cancel",
        "Cancel a withdrawal (an order already at a provider runs to its end)",
        {202: out.Withdrawal},
        "bearer",
        CoreCancellation,
        (409,),
    ),
    Operation(
        "post",
        "/webhooks/{provider}",
        "Provider webhook, signed per Standard Webhooks",
        {202: out.WebhookAck, 200: out.WebhookAck},
        body=WebhookBody,
        errors=(401,),
        field_errors=False,
        headers=_WEBHOOK_HEADERS,
    ),
    Operation(
        "get", "/ops/v1/manual-checks", "Tasks awaiting a person", {200: out.ManualChecks}, "ops"
    ),
    Operation(
        "post",
        "/ops/v1/tasks/{task_id}/resolve",
        "Resolve a manual check",
        {200: out.Withdrawal},
        "ops",
        Resolution,
        (409,),
    ),
    Operation(
        "post",
        "/ops/v1/tasks/{task_id}/cancel",
        "Cancel one task (skip that provider)",
        {200: out.Withdrawal},
        "ops",
        Cancellation,
        (409,),
    ),
    Operation(
        "post",
        "/ops/v1/withdrawals/{ident}/cancel",
        "Cancel a withdrawal",
        {202: out.Withdrawal},
        "ops",
        Cancellation,
        (409,),
    ),
    Operation(
        "get",
        "/ops/v1/dead-letters",
        "Dead letters not yet replayed",
        {200: out.DeadLetters},
        "ops",
    ),
    Operation(
        "post",
        "/ops/v1/dead-letters/{dead_letter_id}/replay",
        "Replay a dead letter",
        {202: out.ReplayAccepted},
        "ops",
        Replay,
    ),
    Operation(
        "get", "/ops/v1/attention", "Withdrawals flagged for a person", {200: out.Attention}, "ops"
    ),
    Operation(
        "get",
        "/ops/v1/providers",
        "Each provider's circuit, recent outcomes, orders in flight and limits",
        {200: out.Providers},
        "ops",
    ),
    Operation(
        "post",
        "/ops/v1/providers/{provider}/circuit",
        "Force a provider's circuit open or closed, or back to automatic (audited)",
        {200: out.ProviderHealth},
        "ops",
        CircuitOverride,
    ),
    Operation("get", "/metrics", "Prometheus metrics", {200: "text/plain"}),
    Operation("get", "/healthz", "Liveness", {200: out.Status}, database=False),
    Operation("get", "/readyz", "Readiness (the database answers)", {200: out.Status}),
    Operation("get", "/openapi.json", "This document", {200: "application/json"}, database=False),
]


def operation_id(method: str, path: str) -> str:
    """`post /ops/v1/tasks/{task_id}/resolve` -> `post_ops_v1_tasks_task_id_resolve`."""
    words = path.replace("{", "").replace("}", "").replace(".", "_").replace("-", "_")
    return "_".join([method, *filter(None, words.split("/"))])


_WITHDRAWAL_ID = {"ident": "$response.body#/id"}
_FIRST_TASK_ID = {"task_id": "$response.body#/tasks/0/id"}
# Where an answer's ids lead (OpenAPI links): clients, and schemathesis's stateful
# phase, can follow a new withdrawal to its reads, its cancels and its tasks.
_LINKS: dict[tuple[str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("post", "/v1/withdrawals"): {
        "Read": ("get", "/v1/withdrawals/{ident}", _WITHDRAWAL_ID),
        "Events": ("get", "/v1/withdrawals/{ident}/events", _WITHDRAWAL_ID),
        "Cancel": ("post", "/v1/withdrawals/{ident}/cancel", _WITHDRAWAL_ID),
        "OpsCancel": ("post", "/ops/v1/withdrawals/{ident}/cancel", _WITHDRAWAL_ID),
        "ResolveTask": ("post", "/ops/v1/tasks/{task_id}/resolve", _FIRST_TASK_ID),
        "CancelTask": ("post", "/ops/v1/tasks/{task_id}/cancel", _FIRST_TASK_ID),
    },
    ("get", "/ops/v1/dead-letters"): {
        "Replay": (
            "post",
            "/ops/v1/dead-letters/{dead_letter_id}/replay",
            {"dead_letter_id": "$response.body#/dead_letters/0/id"},
        )
    },
}


def _links(op: Operation) -> dict[str, Any]:
    return {
        name: {"operationId": operation_id(method, path), "parameters": params}
        for name, (method, path, params) in _LINKS.get((op.method, op.path), {}).items()
    }


def _content(model: type[BaseModel] | str) -> dict[str, Any]:
    if isinstance(model, str):
        schema: dict[str, Any] = {"type": "object" if model.endswith("json") else "string"}
        return {model: {"schema": schema}}
    return {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    params = [{"name": n, "in": "path", "required": True, "schema": _PATH_PARAMS[n]} for n in names]
    params += [
        {"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
        for h in op.headers
    ]
    return params


def _responses(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": model.__doc__ if not isinstance(model, str) else "ok"}
        | {"content": _content(model)}
        | ({"links": links} if (links := _links(op)) else {})
        for status, model in op.ok.items()
    }
    for status in op.error_statuses():
        answer = {"description": _ERROR_MEANING[status], "content": _content(out.Error)}
        if status == 503:
            answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        responses[str(status)] = answer
    responses["default"] = {"description": "any other error", "content": _content(out.Error)}
    return responses


def _operation(op: Operation) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "operationId": operation_id(op.method, op.path),
        "summary": op.summary,
        "responses": _responses(op),
    }
    if op.security:
        spec["security"] = [{op.security: []}]
    if params := _parameters(op):
        spec["parameters"] = params
    if op.body is not None:
        spec["requestBody"] = {"required": True, "content": _content(op.body)}
    return spec


@cache
def for_providers(providers: tuple[str, ...]) -> dict[str, Any]:
    """The document as this deployment serves it: the configured providers are the
    only values a cascade or a webhook path may name."""
    document = build()
    names = {"type": "string", "enum": list(providers)}
    request = document["components"]["schemas"]["WithdrawalRequest"]
    request["properties"]["cascade"]["items"] = names
    for param in document["paths"]["/webhooks/{provider}"]["post"]["parameters"]:
        if param["name"] == "provider":
            param["schema"] = names
    return document


def build() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(out.Error, "serialization")]
    for op in OPERATIONS:
        if op.body is not None and (op.body, "validation") not in models:
            models.append((op.body, "validation"))
        for model in op.ok.values():
            if not isinstance(model, str) and (model, "serialization") not in models:
                models.append((model, "serialization"))
    _, definitions = models_json_schema(models, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "payment-service", "version": "0.2.0"},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API_TOKENS"},
                "ops": {"type": "http", "scheme": "bearer", "description": "OPS_TOKENS"},
            },
            "schemas": definitions["$defs"],
        },
        "paths": paths,
    }


OPENAPI: dict[str, Any] = build()
