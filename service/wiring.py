"""Builds the long-lived objects of one process (API server or worker)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from functools import cache

import httpx
import procrastinate

from activities.http import OutboundHttp
from activities.ledger import LedgerClient
from activities.notifier import CoreNotifier
from activities.provider_adapters import WebhookTranslator, build_adapters
from activities.providers import ProviderAdapter
from activities.withdrawal import WithdrawalActivities
from engine.config import ProviderConfig, Settings, load_definitions
from engine.db import Pool, open_pool
from engine.engine import Engine
from engine.inline import InlineRunner
from engine.jobs import build_app
from engine.retry import CappedBackoff
from engine.scheduler import ProcrastinateScheduler
from engine.steps import Runtime, notify_inline, run_inline
from service.health import HealthRecorder, evaluate_health, health_rules
from service.rollout import RolloutGate
from service.routing import ProviderRouting
from workflows.withdrawal_events import Timing

log = logging.getLogger("payment.wiring")


@dataclass
class Services:
    settings: Settings
    providers: dict[str, ProviderConfig]
    pool: Pool
    app: procrastinate.App
    scheduler: ProcrastinateScheduler
    engine: Engine
    http: httpx.AsyncClient
    outbound: OutboundHttp
    adapters: dict[str, ProviderAdapter]
    runtime: Runtime
    gate: RolloutGate

    async def close(self, drain_s: float = 10.0) -> None:
        """Finish (or leave to the sweep) the steps in hand, then close."""
        runner = self.scheduler.runner
        if runner is not None and (left := await runner.drain(drain_s)):
            log.warning("%d in-process steps left unfinished; the sweep will resume them", left)
        await self.app.close_async()
        await self.http.aclose()
        await self.outbound.aclose()
        await self.pool.close()


async def open_services(
    settings: Settings,
    *,
    pool_size: int = 10,
    serving_requests: bool = False,
    inline_steps: int | None = None,
) -> Services:
    """`serving_requests` (the API): a short wait for a connection, so a client
    gets a 503 to retry rather than a hung request.
    Jobs keep the pool's long wait: a short outage should delay them, not fail them.
    `inline_steps`: how many activities this process runs at once right after the
    transitions it commits (engine/inline.py); 0: every step is a job."""
    providers = settings.providers()
    steps = settings.inline_steps if inline_steps is None else inline_steps
    pool = await open_pool(
        settings.database_url,
        max_size=pool_size + steps,
        acquire_timeout_s=settings.db_acquire_timeout_s if serving_requests else 30.0,
        # Every process: a connection the server closed (a restart, a failover) or
        # one on a standby is replaced at hand-out, at no round trip otherwise.
        check=True,
    )
    retry = CappedBackoff(
        settings.activity_max_retries, settings.activity_retry_base_s, settings.activity_retry_cap_s
    )
    app = build_app(
        settings.database_url,
        retry,
        settings.maintenance_every_s,
        pool_size=2 if serving_requests else pool_size,
        checks_every_s=settings.health_every_s,
    )
    await app.open_async()
    # A step waiting here longer than a quarter of the sweep's grace goes to a job
    # instead, so the sweep never takes a waiting step for a lost one.
    wait_s = settings.sweep_grace_s / 4
    runner = InlineRunner(steps, steps * 256, wait_s) if steps > 0 else None
    scheduler = ProcrastinateScheduler(app, runner)

    @cache
    def timing(provider: str) -> Timing:
        config = providers.get(provider)
        return config.timing.to_timing() if config else Timing()

    definitions = load_definitions(settings.workflow_definitions)
    routing = ProviderRouting(
        {name: config.limits for name, config in providers.items()},
        settings.health_max_wait_s,
        probe_retry_s=settings.health_every_s,
    )
    engine = Engine(
        definitions,
        scheduler,
        lambda row: timing(row["provider"]),
        admission=routing,
        listener=HealthRecorder(),
    )
    http = httpx.AsyncClient(timeout=settings.ledger_timeout_s)  # ops and tools
    outbound = OutboundHttp(settings.ledger_timeout_s)  # the steps' calls
    adapters = build_adapters(providers, outbound)  # each provider's `adapter`, by name
    ledger = LedgerClient(outbound, settings.ledger_url, settings.ledger_token.get_secret_value())
    notifier = None
    if settings.core_callback_url:
        token = settings.core_callback_token.get_secret_value()
        notifier = CoreNotifier(outbound, settings.core_callback_url, token).notify
    runtime = Runtime(
        engine=engine,
        pool=pool,
        activities=WithdrawalActivities(ledger, adapters).registry(),
        translate_webhook=WebhookTranslator(adapters),  # stored rows: read by their adapter
        stalled_after_s=settings.stalled_after_s,
        sweep_grace_s=settings.sweep_grace_s,
        first_retry_s=settings.activity_retry_base_s,
        notify=notifier,
        periodic_checks=functools.partial(evaluate_health, health_rules(providers)),
    )
    if runner is not None:
        scheduler.inline_activity = functools.partial(run_inline, runtime)
        if notifier is not None:
            scheduler.inline_notification = functools.partial(notify_inline, runtime)
    gate = RolloutGate.load(
        settings.rollout_file, settings.rollout_cascade_percent, settings.rollout_health_routing
    )
    return Services(
        settings, providers, pool, app, scheduler, engine, http, outbound, adapters, runtime, gate
    )
