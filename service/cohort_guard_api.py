"""`POST /ops/v1/config/rollout/cohorts/{cohort}/restore` (admin): a cohort moved
back (by the cohort guard, service/cohort_guard.py, or by a person) gets its own
policy again, for new withdrawals. A new version of the rollout document, audited
with the person and their reason like every configuration change."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from service.api import services
from service.cohort_guard import NotMovedBack, restore
from service.config_models import CohortRestore
from service.config_store import VersionConflict
from service.identity import require
from service.models import BadRequest
from service.ops_api import body_of
from service.principals import ADMIN
from service.rollout import Policy


async def restore_cohort(request: Request) -> JSONResponse:
    person = await require(request, ADMIN)
    svc = services(request)
    try:
        cohort = Policy(request.path_params["cohort"])
    except ValueError:
        raise BadRequest(404, "not_found", "no such cohort") from None
    body = await body_of(request, CohortRestore)
    async with svc.pool.connection() as conn:
        try:
            version = await restore(
                conn, svc.live, cohort, person.actor, body.reason, body.expected_version
            )
        except NotMovedBack as exc:
            raise BadRequest(409, "not_moved_back", str(exc)) from None
        except VersionConflict as exc:  # another change landed first: decide again
            raise BadRequest(409, "version_conflict", str(exc)) from None
    return JSONResponse({"name": "rollout", "version": version})


COHORT_ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/ops/v1/config/rollout/cohorts/{cohort}/restore", restore_cohort, ["POST"]),
]
