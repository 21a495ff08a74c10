"""The support console: server-rendered pages for the people who resolve manual
checks, in the API process (starlette + Jinja2, no front-end build).

Behind the ops tokens: a login form trades one for a signed session cookie
(service/console_auth.py); every POST also carries the session's CSRF token.
Each action is the ops API's own audited operation, by the logged-in operator:
a resolve is `ManualResolved` applied by the engine with actor `ops:<operator>`,
a replay is `deadletters.replay`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from engine import deadletters
from engine.contracts import Origin, UnknownTask
from service import console_auth as auth
from service.api import read_limited, services
from service.withdrawals import find_queue_id
from workflows.core import IllegalTransition
from workflows.money import format_minor
from workflows.withdrawal_events import ManualResolved

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates" / "console"))
TEMPLATES.env.filters["money"] = lambda row: format_minor(row["amount_minor"], row["currency"])
MAX_REASON = 500
FORM = "application/x-www-form-urlencoded"

_MANUAL = (
    "SELECT task_id::text, queue_id::text, order_id, provider, provider_ref, amount_minor,"
    " currency, last_reason, waiting_since FROM v_manual_check_queue ORDER BY waiting_since"
)
_TIMELINE = (
    "SELECT event_id, task_id::text, provider, from_state, to_state, event_type, actor,"
    " payload->>'reason' AS reason, occurred_at FROM v_withdrawal_timeline"
    " WHERE queue_id = %s ORDER BY event_id"
)
_TASKS = (
    "SELECT id::text, position, provider, status::text, funds::text, provider_ref, last_reason"
    " FROM order_tasks WHERE queue_id = %s ORDER BY position"
)
_ANSWERS = (
    "SELECT received_at, body->'data'->>'status' AS status, outcome FROM webhook_inbox"
    " WHERE provider = %s AND reference = %s ORDER BY id DESC LIMIT 5"
)


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    svc = services(request)
    found = auth.session(svc.settings.ops_tokens, request.cookies.get(auth.COOKIE))
    extra = (
        {"operator": found.operator, "csrf": found.csrf(svc.settings.ops_tokens)} if found else {}
    )
    return TEMPLATES.TemplateResponse(request, name, {**context, **extra}, status_code=status)


def _viewer(request: Request) -> auth.Session | None:
    return auth.session(services(request).settings.ops_tokens, request.cookies.get(auth.COOKIE))


async def _actor(request: Request) -> tuple[auth.Session, dict[str, str]] | Response:
    """The session and form of a POST, or the page that refuses it (nothing changed)."""
    found = _viewer(request)
    if found is None:
        return _page(request, "refused.html", {"why": "Log in first."}, 401)
    form = await _form(request)
    if not form.get("csrf") or form["csrf"] != found.csrf(services(request).settings.ops_tokens):
        return _page(request, "refused.html", {"why": "The form expired: reload it."}, 403)
    return found, form


async def login_page(request: Request) -> Response:
    return _page(request, "login.html", {})


async def login(request: Request) -> Response:
    form = await _form(request)
    operator = form.get("operator", "").strip()[:100]
    cookie = auth.login(services(request).settings.ops_tokens, form.get("token", ""), operator)
    if cookie is None or not operator or "\x00" in operator:
        return _page(request, "login.html", {"error": "Name and a valid ops token, please."}, 401)
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(
        auth.COOKIE,
        cookie,
        max_age=auth.LIFETIME_S,
        httponly=True,
        secure=True,
        samesite="strict",
        path="/console",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/console")
    return response


async def manual_checks(request: Request) -> Response:
    if _viewer(request) is None:
        return RedirectResponse("/console/login", status_code=303)
    async with services(request).pool.connection() as conn:
        rows = await (await conn.execute(_MANUAL)).fetchall()
    return _page(request, "manual.html", {"tasks": rows})


async def withdrawal(request: Request) -> Response:
    if _viewer(request) is None:
        return RedirectResponse("/console/login", status_code=303)
    ident = request.path_params.get("ident") or request.query_params.get("q", "").strip()
    async with services(request).pool.connection() as conn:
        queue_id = await find_queue_id(conn, ident) if ident and "\x00" not in ident else None
        if queue_id is None:
            return _page(request, "missing.html", {"ident": ident}, 404)
        return _page(request, "withdrawal.html", await _withdrawal(conn, queue_id))


async def task(request: Request) -> Response:
    if _viewer(request) is None:
        return RedirectResponse("/console/login", status_code=303)
    task_id = _uuid(request.path_params["task_id"])
    async with services(request).pool.connection() as conn:
        row = (
            None
            if task_id is None
            else await (
                await conn.execute(
                    "SELECT queue_id::text, provider FROM order_tasks WHERE id = %s", (task_id,)
                )
            ).fetchone()
        )
        if row is None:
            return _page(request, "missing.html", {"ident": request.path_params["task_id"]}, 404)
        context = await _withdrawal(conn, row["queue_id"])
        answers = await (await conn.execute(_ANSWERS, (row["provider"], task_id))).fetchall()
    chosen = next(t for t in context["tasks"] if t["id"] == task_id)
    return _page(request, "task.html", {**context, "task": chosen, "answers": answers})


async def resolve(request: Request) -> Response:
    checked = await _actor(request)
    if isinstance(checked, Response):
        return checked
    found, form = checked
    task_id = _uuid(request.path_params["task_id"])
    reason, outcome = form.get("reason", "").strip(), form.get("outcome")
    if task_id is None or outcome not in ("positive", "negative"):
        return _page(request, "refused.html", {"why": "Choose positive or negative."}, 422)
    if not reason or len(reason) > MAX_REASON or "\x00" in reason:
        return _page(request, "refused.html", {"why": "A reason is required."}, 422)
    event = ManualResolved(outcome == "positive", found.operator, reason)
    svc = services(request)
    async with svc.pool.connection() as conn:
        try:
            await svc.engine.apply(conn, task_id, event, origin=Origin(f"ops:{found.operator}"))
        except (UnknownTask, IllegalTransition) as exc:
            return _page(request, "refused.html", {"why": f"Not resolved: {exc}"}, 409)
        queue = await (
            await conn.execute("SELECT queue_id::text FROM order_tasks WHERE id = %s", (task_id,))
        ).fetchone()
    assert queue is not None
    return RedirectResponse(f"/console/withdrawals/{queue['queue_id']}", status_code=303)


async def attention(request: Request) -> Response:
    if _viewer(request) is None:
        return RedirectResponse("/console/login", status_code=303)
    async with services(request).pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT id::text, order_id, status::text, attention_reason, updated_at"
                " FROM order_queues WHERE needs_attention ORDER BY updated_at"
            )
        ).fetchall()
    return _page(request, "attention.html", {"withdrawals": rows})


async def dead_letters(request: Request) -> Response:
    if _viewer(request) is None:
        return RedirectResponse("/console/login", status_code=303)
    async with services(request).pool.connection() as conn:
        rows = await deadletters.list_open(conn)
    return _page(request, "dead_letters.html", {"dead_letters": rows})


async def replay(request: Request) -> Response:
    checked = await _actor(request)
    if isinstance(checked, Response):
        return checked
    found, _ = checked
    raw = str(request.path_params["dead_letter_id"])
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        return _page(request, "missing.html", {"ident": raw}, 404)
    svc = services(request)
    async with svc.pool.connection() as conn:
        try:
            await deadletters.replay(conn, svc.app, int(raw), found.operator)
        except deadletters.NotReplayable as exc:
            return _page(request, "refused.html", {"why": str(exc)}, 409)
    return RedirectResponse("/console/dead-letters", status_code=303)


async def _withdrawal(conn: Any, queue_id: str) -> dict[str, Any]:
    queue = await (
        await conn.execute(
            "SELECT id::text, order_id, merchant_id, status::text, amount_minor, currency, policy,"
            " needs_attention, attention_reason, trace_id, created_at, finished_at"
            " FROM order_queues WHERE id = %s",
            (queue_id,),
        )
    ).fetchone()
    tasks = await (await conn.execute(_TASKS, (queue_id,))).fetchall()
    events = await (await conn.execute(_TIMELINE, (queue_id,))).fetchall()
    return {"queue": queue, "tasks": tasks, "events": events}


async def _form(request: Request) -> dict[str, str]:
    """An HTML form's fields (application/x-www-form-urlencoded, size-limited)."""
    if request.headers.get("content-type", "").split(";")[0] != FORM:
        return {}
    body = await read_limited(request, services(request).settings.max_body_bytes)
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items()}


def _uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


CONSOLE_ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/console/login", login_page, ["GET"]),
    ("/console/login", login, ["POST"]),
    ("/console/logout", logout, ["POST"]),
    ("/console", manual_checks, ["GET"]),
    ("/console/withdrawals", withdrawal, ["GET"]),
    ("/console/withdrawals/{ident}", withdrawal, ["GET"]),
    ("/console/tasks/{task_id}", task, ["GET"]),
    ("/console/tasks/{task_id}/resolve", resolve, ["POST"]),
    ("/console/attention", attention, ["GET"]),
    ("/console/dead-letters", dead_letters, ["GET"]),
    ("/console/dead-letters/{dead_letter_id}/replay", replay, ["POST"]),
]
