"""Strict JSON for bodies that may end up in PostgreSQL.

Python's `json` is lenient where PostgreSQL is not: it detects UTF-16/32 on its
own, accepts `NaN`/`Infinity`, and decodes `"\\u0000"` and lone surrogates into
strings that neither `text` nor `jsonb` can store. Each of those reached the
database and came back as a 500. Here they are refused before any SQL runs,
with the place in the document that is wrong.
"""

from __future__ import annotations

import json
from typing import Any

_BOM = b"\xef\xbb\xbf"
MAX_DEPTH = 32


class NotJson(ValueError):
    """The bytes are not one strict UTF-8 JSON document."""


class NotStorable(ValueError):
    """Valid JSON, but a string PostgreSQL cannot store. `field` says where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _no_constants(name: str) -> Any:
    raise NotJson(f"{name} is not valid JSON")


def loads(body: bytes) -> Any:
    """Parse strictly: UTF-8 without a BOM, no NaN/Infinity, bounded nesting, and
    every string (keys included) free of NUL and unpaired surrogates."""
    if body.startswith(_BOM):
        raise NotJson("byte order mark")
    try:
        text = body.decode("utf-8")  # strict: UTF-16 and invalid bytes fail here
        document = json.loads(text, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise NotJson("body is not valid JSON") from None
    _check(document, "", 0)
    return document


def _check(value: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise NotStorable(where or "body", f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_string(value, where or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            _check_string(key, f"{path} (key)")
            _check(item, path, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{where}.{index}" if where else str(index), depth + 1)


def _check_string(value: str, where: str) -> None:
    if "\x00" in value:
        raise NotStorable(_printable(where), "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise NotStorable(_printable(where), "contains an unpaired surrogate") from None


def _printable(where: str) -> str:
    """A field path safe to echo back: the key itself may hold what we refuse."""
    return where.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
