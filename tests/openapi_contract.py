"""Every answer the test suite receives from the API is checked against /openapi.json.

A route missing from the document must be a JSON 404, a method missing from it a
JSON 405; any other answer must have a documented status (or fall under
`default`), the documented media type, and a body that validates against the
documented schema (JSON Schema 2020-12, as OpenAPI 3.1 says).
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from service.openapi import OPENAPI


class ContractViolation(AssertionError):
    pass


def _template(path: str) -> re.Pattern[str]:
    parts = ("[^/]+" if p.startswith("{") else re.escape(p) for p in path.split("/"))
    return re.compile("/".join(parts))


_PATHS = [(_template(path), path) for path in OPENAPI["paths"]]
_ERROR = {"$ref": "#/components/schemas/Error"}


def _validate(schema: dict[str, Any], body: Any, where: str) -> None:
    # Local $refs (#/components/...) resolve against a root that carries the components.
    validator = Draft202012Validator({**schema, "components": OPENAPI["components"]})
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        raise ContractViolation(f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}")


def check(response: httpx.Response) -> None:
    """Raise ContractViolation when the answer is not what the document promises."""
    response.read()
    path, method = response.request.url.path, response.request.method.lower()
    where = f"{response.request.method} {path} -> {response.status_code}"
    template = next((t for pattern, t in _PATHS if pattern.fullmatch(path)), None)
    operation = OPENAPI["paths"].get(template, {}).get(method) if template else None
    if operation is None:
        expected = 404 if template is None else 405
        if response.status_code != expected:
            raise ContractViolation(f"{where}: undocumented, expected {expected}")
        _validate(_ERROR, response.json(), where)
        return
    responses = operation["responses"]
    documented = responses.get(str(response.status_code)) or responses.get("default")
    if documented is None:
        raise ContractViolation(f"{where}: status not documented")
    media = response.headers.get("content-type", "").split(";")[0].strip()
    content = documented.get("content", {})
    if media not in content:
        raise ContractViolation(f"{where}: {media!r} not among {sorted(content)}")
    if media == "application/json":
        _validate(content[media]["schema"], response.json(), where)


def hook(response: httpx.Response) -> None:
    """An httpx response event hook."""
    check(response)
