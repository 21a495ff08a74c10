"""cascade-core's outcome callback, simulated: records what payment-service tells it.

`POST /core/v1/withdrawal-outcomes` with `Idempotency-Key` (the withdrawal id)
stores the first body per key; a replay answers 200 and stores nothing new,
but is counted, so tests can see retries. Faults make it answer 503.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.web import BadBody, bearer_ok, error, json_object, unauthorized


@dataclass
class CoreSim:
    token: str
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    error_rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    async def receive(self, request: Request) -> Response:
        if not bearer_ok(request, self.token):
            return unauthorized()
        key = request.headers.get("idempotency-key", "")
        if not key:
            return error(400, "missing_idempotency_key")
        if self.rng.random() < self.error_rate:
            return error(503, "injected_fault")
        try:
            body = await json_object(request)
        except BadBody as exc:
            return error(400, "invalid_request", str(exc))
        self.deliveries[key] = self.deliveries.get(key, 0) + 1
        first = self.outcomes.setdefault(key, body)
        return JSONResponse({"status": "recorded", "replay": first is not body})

    async def list_outcomes(self, request: Request) -> Response:
        if not bearer_ok(request, self.token):
            return unauthorized()
        rows = [
            {"key": k, "deliveries": self.deliveries[k], "body": v}
            for k, v in self.outcomes.items()
        ]
        return JSONResponse({"outcomes": rows})

    async def set_faults(self, request: Request) -> Response:
        if not bearer_ok(request, self.token):
            return unauthorized()
        try:
            body = await json_object(request)
        except BadBody as exc:
            return error(400, "invalid_request", str(exc))
        self.error_rate = float(body.get("error_rate", 0.0))
        self.rng = random.Random(int(body.get("seed", 1)))
        return JSONResponse({"error_rate": self.error_rate})

    def routes(self) -> list[Route]:
        return [
            Route("/v1/withdrawal-outcomes", self.receive, methods=["POST"]),
            Route("/_admin/outcomes", self.list_outcomes, methods=["GET"]),
            Route("/_admin/faults", self.set_faults, methods=["PUT"]),
        ]
