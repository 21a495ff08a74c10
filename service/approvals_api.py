"""Four-eyes on money in the ops API: a person's decision on a manual check, the
proposals waiting for an approver, and their approval or rejection.

People are signed in through the OpenID issuer (service/identity.py): deciding
needs `resolver`, approving or rejecting `approver` (and not being the proposer),
reading `viewer`. The rules and the flow are service/approvals.py's:

- POST /ops/v1/tasks/{task_id}/resolve: 200 and the withdrawal when the decision
  applied at once; 202 and `{"proposal": ...}` when it waits for an approver;
- GET /ops/v1/approvals: the proposals waiting, oldest first;
- POST /ops/v1/approvals/{proposal_id}/approve | reject: 200 with the proposal and
  the withdrawal; 403 for the proposer or without `approver`; 409 when the proposal
  is closed, expired or its task moved on (nothing is applied).
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from service import approvals
from service.api import services
from service.approval_models import Approval, Rejection
from service.four_eyes import FourEyesRules, Proposal
from service.identity import require
from service.models import BadRequest, Resolution
from service.ops_api import body_of
from service.principals import APPROVER, RESOLVER, VIEWER
from service.proposals import awaiting_approval
from service.withdrawals import withdrawal_view


def _uuid(request: Request, name: str, missing: str) -> str:
    """A path id that is a UUID; anything else names nothing (404) and reaches no SQL."""
    try:
        return str(uuid.UUID(str(request.path_params[name])))
    except ValueError:
        raise BadRequest(404, "not_found", missing) from None


async def resolve_task(request: Request) -> JSONResponse:
    person = await require(request, RESOLVER)
    body = await body_of(request, Resolution)
    task_id = _uuid(request, "task_id", "no such task")
    svc = services(request)
    rules = FourEyesRules.from_settings(svc.settings)
    decision = (body.outcome == "positive", body.reason)
    async with svc.pool.connection() as conn:
        decided = await approvals.decide(conn, svc.engine, rules, person, task_id, decision)
        if decided.proposal is not None:
            return JSONResponse({"proposal": decided.proposal.view()}, status_code=202)
        return JSONResponse(await withdrawal_view(conn, decided.queue_id))


async def pending(request: Request) -> JSONResponse:
    await require(request, VIEWER)
    async with services(request).pool.connection() as conn:
        listed = await awaiting_approval(conn)
    return JSONResponse({"proposals": [{**p.view(), **about} for p, about in listed]})


async def approve(request: Request) -> JSONResponse:
    person = await require(request, APPROVER)
    body = await body_of(request, Approval)
    proposal_id = _uuid(request, "proposal_id", "no such proposal")
    svc = services(request)
    async with svc.pool.connection() as conn:
        decided = await approvals.approve(conn, svc.engine, person, proposal_id, body.reason)
        return await _decided(conn, decided)


async def reject(request: Request) -> JSONResponse:
    person = await require(request, APPROVER)
    body = await body_of(request, Rejection)
    proposal_id = _uuid(request, "proposal_id", "no such proposal")
    svc = services(request)
    async with svc.pool.connection() as conn:
        decided = await approvals.reject(conn, svc.engine, person, proposal_id, body.reason)
        return await _decided(conn, decided)


async def _decided(conn: Any, proposal: Proposal) -> JSONResponse:
    withdrawal = await withdrawal_view(conn, proposal.queue_id)
    return JSONResponse({"proposal": proposal.view(), "withdrawal": withdrawal})


APPROVAL_ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/ops/v1/tasks/{task_id}/resolve", resolve_task, ["POST"]),
    ("/ops/v1/approvals", pending, ["GET"]),
    ("/ops/v1/approvals/{proposal_id}/approve", approve, ["POST"]),
    ("/ops/v1/approvals/{proposal_id}/reject", reject, ["POST"]),
]
