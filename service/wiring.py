"""Builds the long-lived objects of one process (API server or worker).

The graph, built once, in one direction: the settings give the providers and
their adapters (activities/), the side effects (ledger, provider, outcome
callback) and the procrastinate app; `Runtime` (engine/steps.py) builds the
scheduler and the engine from them, so nothing is wired up late.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache

import httpx
import procrastinate

from activities.http import OutboundHttp
from activities.ledger import LedgerClient
from activities.notifier import CoreNotifier
from activities.provider_adapters import VersionedAdapters, WebhookTranslator, check_adapters
from activities.provider_config import LimitsConfig, ProviderConfig, TimingConfig
from activities.providers import ProviderAdapter
from activities.withdrawal import WithdrawalActivities
from engine.activity import Activity
from engine.contracts import ShellJob, TransitionListener
from engine.db import Pool, open_pool
from engine.engine import Engine, EngineHooks
from engine.inline import InlineRunner
from engine.jobs import build_app
from engine.journal import Conn
from engine.retry import CappedBackoff
from engine.rows import QueueRow, TaskRow, column
from engine.startup import load_definitions
from engine.steps import Runtime, RuntimeOptions
from service.approvals import close_stale
from service.cohort_guard import CohortGuard, follow_moved_back
from service.health import HealthRecorder, evaluate_health, health_rules
from service.history_job import history_jobs
from service.live_config import CurrentProviders, LiveConfig
from service.notifications import CoreOutcomes
from service.provider_documents import ProviderSet, providers_body
from service.reconciliation import reconcile_jobs, when_due
from service.rollout import RolloutConfig, RolloutGate
from service.routing import ProviderRouting
from service.settings import Settings
from service.settle_slo import SettleRecorder, count_overdue, roll_up, settle_target_s
from service.webhook_inbox import WebhookInbox
from service.webhook_limits import WebhookTokens
from workflows.core import Event, Storage
from workflows.withdrawal_events import Timing

log = logging.getLogger("payment.wiring")


@dataclass
class Services:
    settings: Settings
    live: LiveConfig
    pool: Pool
    app: procrastinate.App
    runtime: Runtime
    http: httpx.AsyncClient
    outbound: OutboundHttp
    adapters: Mapping[str, ProviderAdapter]  # in force: the webhook ingest's
    inbox: WebhookInbox
    webhook_tokens: WebhookTokens  # this process's leases of the webhook limits

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def providers(self) -> Mapping[str, ProviderConfig]:
        """The providers in force (live configuration), following changes."""
        return CurrentProviders(self.live)

    @property
    def gate(self) -> RolloutGate:
        return self.live.gate

    async def close(self, drain_s: float = 10.0) -> None:
        """Finish (or leave to the sweep) the steps in hand, then close."""
        runner = self.runtime.jobs.runner
        if runner is not None and (left := await runner.drain(drain_s)):
            log.warning("%d in-process steps left unfinished; the sweep will resume them", left)
        await self.live.close()
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
    steps = settings.inline_steps if inline_steps is None else inline_steps
    pool = await _open_pool(settings, pool_size + steps, serving_requests)
    live = await _open_live_config(settings, pool)
    outbound = OutboundHttp(settings.ledger_timeout_s)  # the steps' calls
    adapters = VersionedAdapters(functools.partial(_settings_at, live), outbound)
    inbox = WebhookInbox(WebhookTranslator(adapters.current()))  # read with the newest
    shell_jobs = {"webhook": inbox.job(), **history_jobs(settings)}
    shell_jobs |= reconcile_jobs(settings, outbound)
    app = _build_app(settings, 2 if serving_requests else pool_size, shell_jobs)
    await app.open_async()
    http = httpx.AsyncClient(timeout=settings.ledger_timeout_s)  # ops and tools
    definitions = load_definitions(settings.workflow_definitions)
    runtime = Runtime(
        definitions,
        pool,
        _activities(settings, outbound, adapters),
        app=app,
        hooks=_engine_hooks(settings, live),
        runner=_runner(settings, steps),
        notice=_outcome_notice(settings, outbound),
        options=_runtime_options(settings),
        periodic_checks=when_due(
            _periodic_checks(
                live,
                definitions.storage(),
                functools.partial(settle_target_s, settings, CurrentProviders(live)),
                CohortGuard(live, settings.guard_every_s),
            ),
            app,
            settings,
        ),
        shell_jobs=shell_jobs,
    )
    live.start()
    tokens = WebhookTokens(pool, settings.webhook_rate_per_s, settings.webhook_burst)
    return Services(
        settings, live, pool, app, runtime, http, outbound, adapters.current(), inbox, tokens
    )


async def _open_live_config(settings: Settings, pool: Pool) -> LiveConfig:
    """The configuration in force; the files seed a scope that has none. A bad
    file stops the process here, before it can seed anything."""
    seed = settings.providers()
    check_adapters(seed)
    rollout = RolloutConfig.from_file(
        settings.rollout_file, settings.rollout_cascade_percent, settings.rollout_health_routing
    )
    live = LiveConfig(pool, settings.database_url, settings.config_scope, settings.config_refresh_s)
    await live.open(rollout, ProviderSet(0, seed), str(settings.providers_file))
    follow_moved_back(live)  # every process exports cohort_moved_back
    if providers_body(seed) != providers_body(live.providers):
        # The database wins: a deploy must not undo a change made in an incident.
        log.warning(
            "%s differs from the live providers (version %d), which are in force;"
            " change them with `service.ops config provider` or the ops API",
            settings.providers_file,
            live.providers.version,
        )
    return live


def _settings_at(
    live: LiveConfig, version: int | None
) -> tuple[Hashable, Mapping[str, ProviderConfig]]:
    """A version's providers, keyed by the credentials they are read with."""
    found = live.providers_at(version)
    return (found.version, live.providers.version), found.providers


def _periodic_checks(
    live: LiveConfig, storage: Storage, settle_s: Callable[[], float], guard: CohortGuard
) -> Callable[[Conn], Awaitable[None]]:
    """The workers' `checks` job (every HEALTH_EVERY_S): the providers' circuits, the
    four-eyes proposals that expired or whose task moved on (service/approvals.py),
    the withdrawals past their settle deadline and the closed minutes' judgements
    (service/settle_slo.py), and the cascade cohorts against single-shot
    (service/cohort_guard.py, every GUARD_EVERY_S)."""

    async def checks(conn: Conn) -> None:
        await evaluate_health(health_rules(live.providers.providers), conn)
        await close_stale(conn, storage)
        await count_overdue(conn, settle_s())
        await roll_up(conn)
        await guard(conn)

    return checks


async def _open_pool(settings: Settings, size: int, serving_requests: bool) -> Pool:
    return await open_pool(
        settings.database_url,
        max_size=size,
        acquire_timeout_s=settings.db_acquire_timeout_s if serving_requests else 30.0,
        # Every process: a connection the server closed (a restart, a failover) or
        # one on a standby is replaced at hand-out, at no round trip otherwise.
        check=True,
    )


def _build_app(
    settings: Settings, pool_size: int, shell_jobs: dict[str, ShellJob]
) -> procrastinate.App:
    retry = CappedBackoff(
        settings.activity_max_retries, settings.activity_retry_base_s, settings.activity_retry_cap_s
    )
    return build_app(
        settings.database_url,
        retry,
        settings.maintenance_every_s,
        pool_size=pool_size,
        checks_every_s=settings.health_every_s,
        shell_jobs=shell_jobs,
    )


def _runner(settings: Settings, steps: int) -> InlineRunner | None:
    # A step waiting here longer than a quarter of the sweep's grace goes to a job
    # instead, so the sweep never takes a waiting step for a lost one.
    wait_s = settings.sweep_grace_s / 4
    if settings.inline_max_wait_s is not None:
        wait_s = min(wait_s, settings.inline_max_wait_s)
    return InlineRunner(steps, steps * 256, wait_s) if steps > 0 else None


def _engine_hooks(settings: Settings, live: LiveConfig) -> EngineHooks:
    def timing_of(row: TaskRow) -> Timing:
        version = column(row, "providers_version")
        config = live.provider_at(
            version if isinstance(version, int) else None, str(column(row, "provider"))
        )
        return _timing(config.timing) if config else Timing()

    routing = ProviderRouting(
        _CurrentLimits(live), settings.health_max_wait_s, probe_retry_s=settings.health_every_s
    )
    settle = SettleRecorder(functools.partial(settle_target_s, settings, CurrentProviders(live)))
    return EngineHooks(
        context_for=timing_of,
        admission=routing,
        listener=_Listeners((HealthRecorder(), settle.on_transition)),
        on_finish=settle.on_finish,
    )


@dataclass(frozen=True)
class _Listeners:
    """Several transition listeners as the engine's one, told in order."""

    each: tuple[TransitionListener, ...]

    async def __call__(
        self,
        conn: Conn,
        queue: QueueRow,
        task: TaskRow,
        event: Event,
        from_status: str,
        to_status: str,
    ) -> None:
        for listener in self.each:
            await listener(conn, queue, task, event, from_status, to_status)


@cache
def _timing(config: TimingConfig) -> Timing:
    return config.to_timing()


class _CurrentLimits(Mapping[str, LimitsConfig]):
    """Each provider's limits in force: a limit is a live control, never a snapshot."""

    def __init__(self, live: LiveConfig) -> None:
        self._providers = CurrentProviders(live)

    def __getitem__(self, name: str) -> LimitsConfig:
        return self._providers[name].limits

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)


def _activities(
    settings: Settings, outbound: OutboundHttp, adapters: VersionedAdapters
) -> dict[str, Activity]:
    token = settings.ledger_token.get_secret_value()
    ledger = LedgerClient(outbound, settings.ledger_url, token)
    return WithdrawalActivities(ledger, adapters).registry()


def _outcome_notice(settings: Settings, outbound: OutboundHttp) -> CoreOutcomes | None:
    if not settings.core_callback_url:
        return None
    token = settings.core_callback_token.get_secret_value()
    return CoreOutcomes(CoreNotifier(outbound, settings.core_callback_url, token).notify)


def _runtime_options(settings: Settings) -> RuntimeOptions:
    return RuntimeOptions(
        stalled_after_s=settings.stalled_after_s,
        sweep_grace_s=settings.sweep_grace_s,
        first_retry_s=settings.activity_retry_base_s,
    )
