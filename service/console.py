"""The support console: server-rendered pages for the people who resolve manual
checks, in the API process (starlette + Jinja2, no front-end build). Four-eyes
(a resolve that waits for an approver, the approvals page): service/console_approvals.py.

People sign in through the OpenID issuer (service/console_signin.py); the session
is a signed cookie (service/console_auth.py), and every POST also carries its CSRF
token. Each action is the ops API's own audited operation, by the signed-in
person, who needs the same role as there (`resolver` to resolve or replay; the
buttons are not shown without it, and the server refuses anyway): a resolve is
`approvals.decide` (`ManualResolved` applied by the engine with actor
`Principal.actor`, or a proposal that waits for an approver), a replay is
`deadletters.replay`.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from engine import deadletters
from service import approvals
from service import console_signin as signin
from service.api import services
from service.console_approvals import APPROVAL_PAGES, task_context
from service.console_pages import page, refused, signed_post, visitor
from service.four_eyes import FourEyesRules
from service.models import BadRequest
from service.principals import RESOLVER
from service.withdrawals import find_queue_id

MAX_REASON = 500

_MANUAL = (
    "SELECT task_id::text, queue_id::text, order_id, provider, provider_ref, amount_minor,"
    " currency, last_reason, waiting_since FROM v_manual_check_queue ORDER BY waiting_since"
)
_TIMELINE = (
    "SELECT event_id, task_id::text, provider, from_state, to_state, event_type, actor,"
    " payload->>'reason' AS reason, payload->>'solicited' AS solicited, occurred_at"
    " FROM v_withdrawal_timeline"
    " WHERE queue_id = %s ORDER BY event_id"
)
_TASKS = (
    "SELECT id::text, position, provider, status::text, target::text, funds::text,"
    " provider_ref, last_reason FROM order_tasks WHERE queue_id = %s ORDER BY position"
)
_WEBHOOKS = (
    "SELECT received_at, 'webhook' AS call, body->'data'->>'status' AS status, outcome"
    " FROM webhook_inbox WHERE provider = %s AND reference = %s ORDER BY id DESC LIMIT 5"
)
# The provider's answers to our own calls, as the audit trail recorded the ones that
# moved the task: a create's (accepted, declined, ambiguous, throttled) and a status
# call's (solicited observations). Webhooks come from the inbox, with what they did.
_CREATE_ANSWERS = frozenset(
    {"order_accepted", "order_declined", "order_ambiguous", "order_throttled"}
)
_OBSERVATIONS = frozenset(
    {
        "provider_succeeded",
        "provider_failed",
        "provider_pending",
        "provider_not_found",
        "status_unknown",
    }
)
ANSWERS_SHOWN = 8
_SIGN_IN = RedirectResponse("/console/login", status_code=303)


async def manual_checks(request: Request) -> Response:
    if (seen_by := await visitor(request)) is None:
        return _SIGN_IN
    async with services(request).pool.connection() as conn:
        rows = await (await conn.execute(_MANUAL)).fetchall()
    return page(request, "manual.html", {"tasks": rows}, seen_by=seen_by)


async def withdrawal(request: Request) -> Response:
    if (seen_by := await visitor(request)) is None:
        return _SIGN_IN
    ident = request.path_params.get("ident") or request.query_params.get("q", "").strip()
    async with services(request).pool.connection() as conn:
        queue_id = await find_queue_id(conn, ident) if ident and "\x00" not in ident else None
        if queue_id is None:
            return page(request, "missing.html", {"ident": ident}, 404, seen_by)
        context = await _withdrawal(conn, queue_id)
    return page(request, "withdrawal.html", context, seen_by=seen_by)


async def task(request: Request) -> Response:
    if (seen_by := await visitor(request)) is None:
        return _SIGN_IN
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
            ident = request.path_params["task_id"]
            return page(request, "missing.html", {"ident": ident}, 404, seen_by)
        context = await _withdrawal(conn, row["queue_id"])
        webhooks = await (await conn.execute(_WEBHOOKS, (row["provider"], task_id))).fetchall()
        four_eyes = await task_context(request, conn, seen_by, context["queue"], str(task_id))
    chosen = next(t for t in context["tasks"] if t["id"] == task_id)
    answers = _answers(context["events"], str(task_id), webhooks)
    context = {**context, "task": chosen, "answers": answers, **four_eyes}
    return page(request, "task.html", context, seen_by=seen_by)


def _answers(events: list[Any], task_id: str, webhooks: list[Any]) -> list[dict[str, Any]]:
    """The provider's last answers for one task, newest first: to our create and
    status calls (from the timeline) and its webhooks."""
    ours = [
        {
            "received_at": e["occurred_at"],
            "call": "create" if e["event_type"] in _CREATE_ANSWERS else "status",
            "status": e["event_type"].removeprefix("order_").removeprefix("provider_"),
            "outcome": f"{e['from_state']} → {e['to_state']}"
            + (f" ({e['reason']})" * bool(e["reason"])),
        }
        for e in events
        if e["task_id"] == task_id
        and (
            e["event_type"] in _CREATE_ANSWERS
            or (e["event_type"] in _OBSERVATIONS and e["solicited"] == "true")
        )
    ]
    every = [*ours, *(dict(w) for w in webhooks)]
    return sorted(every, key=lambda a: a["received_at"], reverse=True)[:ANSWERS_SHOWN]


async def resolve(request: Request) -> Response:
    checked = await signed_post(request, RESOLVER)
    if isinstance(checked, Response):
        return checked
    found, form = checked
    task_id = _uuid(request.path_params["task_id"])
    reason, outcome = form.get("reason", "").strip(), form.get("outcome")
    if task_id is None or outcome not in ("positive", "negative"):
        return refused(request, "Choose positive or negative.", 422, found)
    if not reason or len(reason) > MAX_REASON or "\x00" in reason:
        return refused(request, "A reason is required.", 422, found)
    svc = services(request)
    rules = FourEyesRules.from_settings(svc.settings)  # four-eyes: maybe only a proposal
    try:
        async with svc.pool.connection() as conn:
            decision = (outcome == "positive", reason)
            done = await approvals.decide(conn, svc.engine, rules, found.person, task_id, decision)
    except BadRequest as error:
        return refused(request, f"Not resolved: {error.message}", error.status, found)
    if done.proposal is not None:  # its page says it waits for a second person
        return RedirectResponse(f"/console/tasks/{task_id}", status_code=303)
    return RedirectResponse(f"/console/withdrawals/{done.queue_id}", status_code=303)


async def attention(request: Request) -> Response:
    if (seen_by := await visitor(request)) is None:
        return _SIGN_IN
    async with services(request).pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT id::text, order_id, status::text, attention_reason, updated_at"
                " FROM order_queues WHERE needs_attention ORDER BY updated_at"
            )
        ).fetchall()
    return page(request, "attention.html", {"withdrawals": rows}, seen_by=seen_by)


async def dead_letters(request: Request) -> Response:
    if (seen_by := await visitor(request)) is None:
        return _SIGN_IN
    async with services(request).pool.connection() as conn:
        rows = await deadletters.list_open(conn)
    return page(request, "dead_letters.html", {"dead_letters": rows}, seen_by=seen_by)


async def replay(request: Request) -> Response:
    checked = await signed_post(request, RESOLVER)
    if isinstance(checked, Response):
        return checked
    found, _ = checked
    raw = str(request.path_params["dead_letter_id"])
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        return page(request, "missing.html", {"ident": raw}, 404, found)
    svc = services(request)
    async with svc.pool.connection() as conn:
        try:
            await deadletters.replay(conn, svc.app, int(raw), found.person.actor)
        except deadletters.NotReplayable as exc:
            return refused(request, str(exc), 409, found)
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
    # A decision being carried out (its ledger call not yet answered): the pages say
    # so, and refresh themselves until it is done.
    settling = any(t["target"] for t in tasks)
    return {"queue": queue, "tasks": tasks, "events": events, "settling": settling}


def _uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


CONSOLE_ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/console/login", signin.login_page, ["GET"]),
    ("/console/sign-in", signin.start, ["GET"]),
    ("/console/callback", signin.callback, ["GET"]),
    ("/console/break-glass", signin.break_glass, ["POST"]),
    ("/console/logout", signin.logout, ["POST"]),
    ("/console", manual_checks, ["GET"]),
    ("/console/withdrawals", withdrawal, ["GET"]),
    ("/console/withdrawals/{ident}", withdrawal, ["GET"]),
    ("/console/tasks/{task_id}", task, ["GET"]),
    ("/console/tasks/{task_id}/resolve", resolve, ["POST"]),
    ("/console/attention", attention, ["GET"]),
    ("/console/dead-letters", dead_letters, ["GET"]),
    ("/console/dead-letters/{dead_letter_id}/replay", replay, ["POST"]),
    *APPROVAL_PAGES,
]
