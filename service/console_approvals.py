"""Four-eyes in the support console: the proposals waiting for a second person, with
approve and reject buttons for the approvers who did not propose them, and what
a task's page says about its decision (service/approvals.py holds the rules).

The buttons are only shown to whom the server allows; the server refuses anyway
(403: not an approver, or the proposal is one's own; 409: closed, expired, or its
task moved on). Each POST carries the session's CSRF token, like every other.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from engine.journal import Conn
from service import approvals
from service.api import services
from service.console_pages import Visitor, page, refused, signed_post, visitor
from service.four_eyes import FourEyesRules, Proposal, decider_refusal
from service.models import BadRequest
from service.principals import APPROVER
from service.proposals import awaiting_approval, pending_for_task

MAX_REASON = 500


def may_decide(proposal: Proposal, seen_by: Visitor) -> bool:
    return decider_refusal(proposal, seen_by.person) is None


async def task_context(
    request: Request, conn: Conn, seen_by: Visitor, queue: dict[str, Any], task_id: str
) -> dict[str, Any]:
    """What a task's page shows of four-eyes: the proposal waiting, whether this person
    may decide it, and which outcomes of the resolve form would wait for a second person."""
    rules = FourEyesRules.from_settings(services(request).settings)
    amount, currency = int(queue["amount_minor"]), str(queue["currency"])
    proposal = await pending_for_task(conn, task_id)
    return {
        "proposal": proposal,
        "may_decide_proposal": proposal is not None and may_decide(proposal, seen_by),
        "four_eyes": {
            "positive": rules.needs_approval(True, amount, currency),
            "negative": rules.needs_approval(False, amount, currency),
        },
    }


async def pending(request: Request) -> Response:
    if (seen_by := await visitor(request)) is None:
        return RedirectResponse("/console/login", status_code=303)
    async with services(request).pool.connection() as conn:
        listed = await awaiting_approval(conn)
    rows = [{"proposal": p, **about, "may_decide": may_decide(p, seen_by)} for p, about in listed]
    return page(request, "approvals.html", {"rows": rows}, seen_by=seen_by)


async def approve(request: Request) -> Response:
    return await _decide(request, approving=True)


async def reject(request: Request) -> Response:
    return await _decide(request, approving=False)


async def _decide(request: Request, *, approving: bool) -> Response:
    checked = await signed_post(request, APPROVER)
    if isinstance(checked, Response):
        return checked
    found, form = checked
    reason = form.get("reason", "").strip() or None
    if reason is not None and (len(reason) > MAX_REASON or "\x00" in reason):
        return refused(request, "A shorter reason.", 422, found)
    if not approving and reason is None:
        return refused(request, "Say why you reject it.", 422, found)
    svc = services(request)
    proposal_id = _uuid(str(request.path_params["proposal_id"]))
    if proposal_id is None:
        return refused(request, "No such proposal.", 404, found)
    try:
        async with svc.pool.connection() as conn:
            person = found.person
            if approving:
                done = await approvals.approve(conn, svc.engine, person, proposal_id, reason)
            else:
                done = await approvals.reject(conn, svc.engine, person, proposal_id, str(reason))
    except BadRequest as error:
        return refused(request, error.message, error.status, found)
    return RedirectResponse(f"/console/withdrawals/{done.queue_id}", status_code=303)


def _uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


APPROVAL_PAGES: list[tuple[str, Any, list[str]]] = [
    ("/console/approvals", pending, ["GET"]),
    ("/console/approvals/{proposal_id}/approve", approve, ["POST"]),
    ("/console/approvals/{proposal_id}/reject", reject, ["POST"]),
]
