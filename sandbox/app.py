"""The sandbox ASGI app: ledger under /ledger, providers under /providers, core under /core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from sandbox.config import SandboxConfig
from sandbox.core import CoreSim
from sandbox.ledger import Ledger
from sandbox.provider_sim import Simulator
from sandbox.providers import ProviderApi
from sandbox.web import AccessLog, http_exception

POOL_MAX_SIZE = 10
POOL_OPEN_TIMEOUT_S = 30.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(config: SandboxConfig, database_url: str) -> Starlette:
    # open=False: the pool is opened inside the running loop by the lifespan.
    pool = AsyncConnectionPool(
        database_url, open=False, min_size=1, max_size=POOL_MAX_SIZE, timeout=10.0
    )
    ledger = Ledger(config, pool)
    sim = Simulator(config)
    providers = ProviderApi(sim, config.ledger_token)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        try:
            await ledger.start()
            await sim.start()
            yield
        finally:
            # Cancel pending status changes and webhooks before the loop goes away.
            await sim.stop()
            await pool.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Mount("/ledger", routes=ledger.routes()),
            Mount("/providers", routes=providers.routes()),
            Mount("/core", routes=CoreSim(config.ledger_token).routes()),
        ],
        middleware=[Middleware(AccessLog)],
        exception_handlers={HTTPException: http_exception},
        lifespan=lifespan,
    )
    app.state.ledger = ledger
    app.state.simulator = sim
    return app
