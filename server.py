"""The HTTP API (starlette + uvicorn): cascade-core submissions and provider webhooks.

Run: `python server.py` (or `make run`). DATABASE_URL unset -> embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
from collections.abc import AsyncIterator

import uvicorn
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.applications import Starlette
from starlette.routing import Route

from devstack.embedded import database_url
from engine import logs, tracing
from engine.startup import prepare_or_exit, startup_arguments
from service.api import ROUTES
from service.api_keys_api import API_KEY_ROUTES
from service.approvals_api import APPROVAL_ROUTES
from service.config_api import CONFIG_ROUTES
from service.console import CONSOLE_ROUTES
from service.console_api_keys import API_KEY_PAGES
from service.console_config import CONFIG_PAGES
from service.edge import EXCEPTION_HANDLERS
from service.metrics_api import metrics_endpoint
from service.ops_api import CONTROL_ROUTES
from service.providers_api import PROVIDER_ROUTES
from service.settings import Settings
from service.wiring import open_services


def build_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.services = await open_services(settings, serving_requests=True)
        try:
            yield
        finally:
            await app.state.services.close()

    routes = [
        Route(path, handler, methods=methods)
        for path, handler, methods in [
            *ROUTES,
            *CONTROL_ROUTES,
            *APPROVAL_ROUTES,
            *PROVIDER_ROUTES,
            *CONFIG_ROUTES,
            *API_KEY_ROUTES,
            *CONSOLE_ROUTES,
            *API_KEY_PAGES,
            *CONFIG_PAGES,
        ]
    ]
    routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    if tracing.setup("payment-service-api"):  # a server span per request (W3C context in)
        app.add_middleware(OpenTelemetryMiddleware, exclude_spans=["receive", "send"])
    # `/webhooks/alpha/` is not a route: a 404 with the error object, never a redirect.
    app.router.redirect_slashes = False
    return app


def create_app() -> Starlette:
    """The app of one API process (`uvicorn --factory`): settings from the environment."""
    if os.environ.get("API_PROCESS_CHILD"):
        _die_with_parent()
    return build_app(Settings.from_env(database_url(keep_running=True)))


def _die_with_parent() -> None:
    """A process of several must not outlive its supervisor (SIGKILLed, say) and
    keep the port: Linux delivers SIGTERM to it when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main() -> None:
    parser = argparse.ArgumentParser(description="payment-service HTTP API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--processes",
        type=int,
        default=int(os.environ.get("API_PROCESSES", "1")),
        help="API processes sharing the port (webhook ingest scales with them)",
    )
    startup_arguments(parser)
    args = parser.parse_args()
    logs.setup()
    url = database_url(keep_running=True)
    settings = Settings.from_env(url)
    prepare_or_exit(settings, args)
    if args.processes > 1:
        os.environ["DATABASE_URL"] = url  # the children find the same (embedded) database
        os.environ["API_PROCESS_CHILD"] = "1"
        uvicorn.run(
            "server:create_app",
            factory=True,
            workers=args.processes,
            host=args.host,
            port=args.port,
            log_config=logs.UVICORN_LOG_CONFIG,
        )
        return
    uvicorn.run(
        build_app(settings), host=args.host, port=args.port, log_config=logs.UVICORN_LOG_CONFIG
    )


if __name__ == "__main__":
    main()
