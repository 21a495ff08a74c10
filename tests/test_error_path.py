"""The one error path, in-process: whatever goes wrong, the answer is the JSON error object."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from activities import strict_json
from service.edge import EXCEPTION_HANDLERS


def _app(failure: Exception) -> Starlette:
    async def crash(_request: Request) -> JSONResponse:
        raise failure

    app = Starlette(routes=[Route("/x", crash)], exception_handlers=EXCEPTION_HANDLERS)
    app.router.redirect_slashes = False
    return app


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (RuntimeError("secret=hunter2"), 500, "internal_error"),
        (KeyError("x"), 500, "internal_error"),
        (
            psycopg.OperationalError("connection to /tmp/.s.PGSQL.5432 failed"),
            503,
            "database_unavailable",
        ),
        (PoolTimeout("couldn't get a connection after 5.00 sec"), 503, "database_unavailable"),
        (psycopg.errors.AdminShutdown("terminating connection"), 503, "database_unavailable"),
    ],
)
def test_every_failure_answers_the_error_object(failure: Exception, status: int, code: str) -> None:
    with TestClient(_app(failure), raise_server_exceptions=False) as client:
        response = client.get("/x")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert "hunter2" not in response.text and "PGSQL" not in response.text
    if status == 503:
        assert response.headers["retry-after"] == "2"


def test_trailing_slash_is_a_404_not_a_redirect() -> None:
    with TestClient(_app(RuntimeError()), raise_server_exceptions=False) as client:
        response = client.get("/x/", follow_redirects=False)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no such route"}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"a": "x\\u0000"}', "a"),
        (b'{"a": ["ok", "\\ud800"]}', "a.1"),
        (b'{"a\\u0000": 1}', "a\\x00 (key)"),
        (b'{"a": {"b": "\\udfff"}}', "a.b"),
        (b'"\\u0000"', "body"),
    ],
)
def test_strict_json_names_the_unstorable_field(body: bytes, field: str) -> None:
    with pytest.raises(strict_json.NotStorable) as caught:
        strict_json.loads(body)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": NaN}',
        b"[Infinity]",
        b"\xef\xbb\xbf{}",
        '{"a": 1}'.encode("utf-16"),
        '{"a": 1}'.encode("utf-16-le"),
        b"\xff",
        b"[" * 5000 + b"]" * 5000,
        b"",
    ],
)
def test_strict_json_refuses_what_postgres_or_utf8_would_refuse(body: bytes) -> None:
    with pytest.raises(ValueError, match=r".") as caught:
        strict_json.loads(body)
    assert isinstance(caught.value, strict_json.NotJson | strict_json.NotStorable)


def test_strict_json_accepts_ordinary_documents() -> None:
    assert strict_json.loads('{"name": "Zoë ✓", "n": [1, 2.5, null, true]}'.encode()) == {
        "name": "Zoë ✓",
        "n": [1, 2.5, None, True],
    }
