"""The procrastinate worker. Run N of these on N hosts against one database.

Graceful shutdown: SIGINT/SIGTERM stop fetching, let running jobs finish (up to
`--graceful-timeout`), then exit. A worker that dies without that (SIGKILL,
power loss) stops heartbeating; any other worker's periodic `retry_stalled`
job puts its jobs back in the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

import procrastinate
import prometheus_client
import uvloop

from activities.outbox_relay import OutboxRelay
from devstack.embedded import database_url
from engine import logs, tracing
from engine.startup import prepare_or_exit, startup_arguments
from engine.timers import run_pump
from service.settings import Settings
from service.wiring import Services, open_services

log = logging.getLogger("payment.worker")


async def run(settings: Settings, concurrency: int, name: str, graceful_timeout: float) -> None:
    services = await open_services(settings, pool_size=concurrency + 2)
    stop_pump = asyncio.Event()
    background = _start_background(services, settings, stop_pump)
    options: dict[str, Any] = {
        "name": name,
        "concurrency": concurrency,
        "additional_context": {"runtime": services.runtime},
        "fetch_job_polling_interval": settings.fetch_interval_s,
        "update_heartbeat_interval": settings.heartbeat_s,
        "stalled_worker_timeout": settings.stalled_after_s,
        "shutdown_graceful_timeout": graceful_timeout,
        "delete_jobs": "successful",
        "install_signal_handlers": False,  # ours below tell a shutdown from a failure
    }
    try:
        await work_until_shutdown(services.app, options, _shutdown_requested())
    finally:
        stop_pump.set()
        await asyncio.gather(*background)
        await services.close(drain_s=graceful_timeout)


def _start_background(
    services: Services, settings: Settings, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """The timer pump and, with NATS_URL, the outbox relay: both run until `stop` is set."""
    background = [
        asyncio.create_task(
            run_pump(
                services.pool,
                services.app,
                settings.timer_pump_interval_s,
                stop,
                conninfo=settings.database_url,
                fire=services.runtime.fire_timer,
            )
        )
    ]
    if settings.nats_url:
        relay = OutboxRelay(
            services.pool,
            settings.database_url,
            settings.nats_url,
            batch=settings.outbox_batch,
            retention_s=settings.outbox_retention_s,
            pause_s=settings.outbox_relay_pause_s,
        )
        background.append(asyncio.create_task(relay.run(stop)))
    return background


def _shutdown_requested() -> asyncio.Event:
    requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, requested.set)
    return requested


async def work_until_shutdown(
    app: procrastinate.App, options: dict[str, Any], shutdown: asyncio.Event
) -> None:
    """Run procrastinate's worker until SIGINT/SIGTERM; restart it when it stops itself.

    procrastinate stops its worker when a side task fails, and its LISTEN
    connection fails whenever PostgreSQL restarts. That is no reason for this
    process to exit: nothing would restart it. Wait (with backoff) and run it again;
    its jobs are meanwhile found by the other workers' stalled-job sweep, or by
    this one when it is back.
    """
    backoff, loop = 0.5, asyncio.get_running_loop()
    while not shutdown.is_set():
        started = loop.time()
        worker = asyncio.create_task(app.run_worker_async(**options))
        stop = asyncio.create_task(shutdown.wait())
        await asyncio.wait({worker, stop}, return_when=asyncio.FIRST_COMPLETED)
        if shutdown.is_set():
            worker.cancel()  # procrastinate stops gracefully: running jobs may finish
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            # A job fetched in the last instant runs in a task of its own that the
            # cancelled worker does not wait for; the app must stay open until it ends.
            jobs = [t for t in asyncio.all_tasks() if t.get_name().startswith("process job")]
            if jobs:
                await asyncio.wait(jobs, timeout=options["shutdown_graceful_timeout"])
            return
        stop.cancel()
        failure = worker.exception() if not worker.cancelled() else None
        log.warning("worker stopped on its own (%r); starting it again in %.1fs", failure, backoff)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shutdown.wait(), timeout=backoff)
        backoff = 0.5 if loop.time() - started > 60 else min(backoff * 2, 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description="payment-service worker")
    parser.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY", "8"))
    )
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--graceful-timeout", type=float, default=30.0)
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("WORKER_METRICS_PORT", "0")),
        help="serve this worker's /metrics on this port (0: off)",
    )
    startup_arguments(parser)
    args = parser.parse_args()
    logs.setup()
    tracing.setup("payment-service-worker")
    url = database_url(keep_running=True)
    settings = Settings.from_env(url)
    prepare_or_exit(settings, args)
    if args.metrics_port:
        addr = os.environ.get("METRICS_ADDR", "127.0.0.1")
        prometheus_client.start_http_server(args.metrics_port, addr=addr)
    # uvloop (installed with uvicorn[standard]): the event loop's own cost halves.
    uvloop.run(run(settings, args.concurrency, args.name, args.graceful_timeout))


if __name__ == "__main__":
    main()
