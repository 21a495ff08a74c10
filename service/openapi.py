"""The OpenAPI document served at /openapi.json, generated from the pydantic models.

Request bodies are the models the handlers validate with (service/models.py) and
answers are the models in service/schemas.py; each operation in the table of
service/openapi_operations.py says which, and which error statuses it can answer.
Kept as a table rather than a framework: the handlers stay plain Starlette, and
the test suite checks every answer it receives against this document
(tests/openapi_contract.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from service import schemas as out
from service.models import ID_PATTERN
from service.openapi_operations import LINKS, OPERATIONS, Operation
from service.rollout import Policy

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
    "document": {"type": "string", "enum": ["rollout", "providers"]},
    "cohort": {
        "type": "string",
        "enum": [p.value for p in Policy],
        "description": "A rollout cohort (the policy the gate gives it)",
    },
    "key_id": {"type": "string", "format": "uuid", "description": "An API key's id"},
    "proposal_id": {"type": "string", "format": "uuid", "description": "A four-eyes proposal's id"},
}
_ERROR_MEANING = {
    400: "the body is not valid JSON (or, for a webhook, not a valid order update)",
    401: "missing or invalid credentials or signature",
    403: "the credentials do not allow this: a role, a key's scope or merchant",
    404: "no such resource",
    409: "not allowed in the resource's current state",
    413: "the body is too large",
    415: "the body is not application/json",
    422: "the body is invalid: details name each field",
    429: "over the limit (a key's, a provider's webhooks): nothing changed; retry after"
    " Retry-After seconds",
    503: "the database is unavailable; retry after Retry-After seconds",
}


def operation_id(method: str, path: str) -> str:
    """`post /ops/v1/tasks/{task_id}/resolve` -> `post_ops_v1_tasks_task_id_resolve`."""
    words = path.replace("{", "").replace("}", "").replace(".", "_").replace("-", "_")
    return "_".join([method, *filter(None, words.split("/"))])


def _links(op: Operation) -> dict[str, Any]:
    return {
        name: {"operationId": operation_id(method, path), "parameters": params}
        for name, (method, path, params) in LINKS.get((op.method, op.path), {}).items()
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
        if status in (429, 503):
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
                "ops": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a person's access token from the OpenID issuer (OIDC_ISSUER)",
                },
            },
            "schemas": definitions["$defs"],
        },
        "paths": paths,
    }


OPENAPI: dict[str, Any] = build()
