"""Configuration edge: environment variables and the providers file (pydantic).

Everything inside the service gets frozen values from here. Secrets are
SecretStr so they never print in logs, reprs or error bodies.
"""

from __future__ import annotations

import os
import tomllib
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from engine.db import follow_primary
from engine.startup import load_definitions as load_definitions  # re-exported
from workflows.health import OUTCOMES, SUCCESSES, HealthRules
from workflows.withdrawal_events import Timing

DEFAULT_PROVIDERS_FILE = Path(__file__).resolve().parent.parent / "config" / "providers.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimingConfig(_Strict):
    recheck_base_s: float = Field(5.0, gt=0)
    recheck_factor: float = Field(2.0, ge=1)
    recheck_cap_s: float = Field(300.0, gt=0)
    recheck_max_attempts: int = Field(5, ge=0)
    webhook_sla_s: float = Field(900.0, gt=0)
    poll_interval_s: float | None = Field(None, gt=0)
    status_timeout_s: float = Field(1800.0, gt=0)

    def to_timing(self) -> Timing:
        return Timing(
            recheck_base=timedelta(seconds=self.recheck_base_s),
            recheck_factor=self.recheck_factor,
            recheck_cap=timedelta(seconds=self.recheck_cap_s),
            recheck_max_attempts=self.recheck_max_attempts,
            webhook_sla=timedelta(seconds=self.webhook_sla_s),
            poll_interval=None
            if self.poll_interval_s is None
            else timedelta(seconds=self.poll_interval_s),
            status_timeout=timedelta(seconds=self.status_timeout_s),
        )


class Classification(_Strict):
    """How a provider's create answers map to accepted / declined / ambiguous."""

    accepted_statuses: tuple[int, ...] = (200, 201, 202)
    declined_statuses: tuple[int, ...] = (400, 402, 403, 404, 409, 422)
    # When set, a declined status only counts as final if its error code is listed.
    declined_codes: tuple[str, ...] | None = None


class HealthConfig(_Strict):
    """When the provider's circuit opens (workflows/health.py)."""

    window_s: float = Field(60.0, gt=0)
    min_calls: int = Field(20, ge=1)
    max_failure_ratio: float = Field(0.5, gt=0, le=1)
    open_s: float = Field(30.0, gt=0)
    probes: int = Field(3, ge=1)
    # Which outcomes count as failures (accepted and succeeded count as successes).
    failures: tuple[str, ...] = ("ambiguous", "timed_out", "failed")

    @field_validator("failures")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(value) - OUTCOMES
        if unknown or set(value) & SUCCESSES:
            raise ValueError(f"failures must be among {sorted(OUTCOMES - SUCCESSES)}")
        return value

    def to_rules(self) -> HealthRules:
        values = self.model_dump()
        return HealthRules(**{**values, "failures": frozenset(self.failures)})


class LimitsConfig(_Strict):
    """What the provider accepts at once, across all workers (service/routing.py)."""

    max_in_flight: int | None = Field(None, ge=1)  # orders open at the provider
    rate_per_s: float | None = Field(None, gt=0)  # orders started per second ...
    burst: int = Field(1, ge=1)  # ... with this many at once


class ProviderConfig(_Strict):
    name: str
    # Which adapter speaks this provider's protocol, by its name in the registry
    # (activities/provider_adapters.py): "http" (the reference protocol) or "acme".
    # An unknown name stops the process at start-up, naming the known ones.
    adapter: str = "http"
    base_url: str
    api_key: SecretStr
    webhook_secrets: tuple[SecretStr, ...] = Field(min_length=1)
    timeout_s: float = Field(5.0, gt=0)
    timing: TimingConfig = TimingConfig()
    classify: Classification = Classification()
    health: HealthConfig = HealthConfig()
    limits: LimitsConfig = LimitsConfig()

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if not all(s.get_secret_value().startswith("whsec_") for s in value):
            raise ValueError("webhook secrets must start with whsec_")
        return value


def load_providers(path: Path) -> dict[str, ProviderConfig]:
    raw = tomllib.loads(path.read_text())
    entries = raw.get("providers", {})
    return {name: ProviderConfig(name=name, **body) for name, body in entries.items()}


def _tokens(value: str | None) -> tuple[SecretStr, ...]:
    return tuple(SecretStr(t.strip()) for t in (value or "").split(",") if t.strip())


class Settings(_Strict):
    database_url: str
    providers_file: Path = DEFAULT_PROVIDERS_FILE
    api_tokens: tuple[SecretStr, ...] = ()
    ops_tokens: tuple[SecretStr, ...] = ()
    ledger_url: str = "http://127.0.0.1:8090/ledger"
    ledger_token: SecretStr = SecretStr("")
    ledger_timeout_s: float = 5.0
    rollout_file: Path | None = None
    rollout_cascade_percent: int | None = Field(None, ge=0, le=100)
    nats_url: str | None = None  # None: the JetStream bridge does not run
    outbox_batch: int = Field(200, ge=1)
    outbox_retention_s: float = Field(7 * 86400, gt=0)
    outbox_relay_pause_s: float = Field(0.0, ge=0)  # test knob: pause between publishes
    core_callback_url: str | None = None  # None: outcome callbacks are off
    core_callback_token: SecretStr = SecretStr("")
    webhook_tolerance_s: int = 300
    max_body_bytes: int = 64 * 1024
    max_cascade: int = 32
    # Transient failures (an ambiguous ledger or provider answer, a database away) are
    # retried with waits of base, 2·base, 4·base, … capped at cap: about an hour by default.
    activity_max_retries: int = Field(70, ge=0)
    activity_retry_base_s: float = Field(1.0, gt=0)
    activity_retry_cap_s: float = Field(60.0, gt=0)
    # Idle, a worker waits for LISTEN/NOTIFY; these polls are the safety net (and
    # what starts a retry whose delay ran out: up to fetch_interval_s late).
    fetch_interval_s: float = 5.0
    timer_pump_interval_s: float = 0.2  # only while it cannot LISTEN
    heartbeat_s: float = 10.0
    stalled_after_s: float = 30.0  # a dead worker's jobs start again after this
    maintenance_every_s: int = Field(15, ge=1, le=59)  # stalled jobs and the sweep
    sweep_grace_s: float = Field(60.0, gt=0)
    # Activities a process runs at once right after the transitions it commits
    # (engine/inline.py); once one has waited sweep_grace_s / 4, or at 0, steps are jobs.
    inline_steps: int = Field(8, ge=0)
    # "module:attribute" of the workflow definitions this build drives (every version
    # with withdrawals in flight; docs/upgrades.md). Another value is for tests.
    workflow_definitions: str = "workflows.registry:DEFINITIONS"
    # Routing (health_cascade withdrawals): how often one worker moves the circuits,
    # and how long a withdrawal whose every provider is unhealthy may wait for one.
    health_every_s: int = Field(5, ge=1, le=59)
    health_max_wait_s: float = Field(900.0, ge=0)
    rollout_health_routing: bool | None = None  # None: the rollout file says (default on)
    # How long a request waits for a database connection before answering 503.
    db_acquire_timeout_s: float = Field(5.0, gt=0)

    @classmethod
    def from_env(cls, database_url: str) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "database_url": follow_primary(database_url),
            "api_tokens": _tokens(env.get("API_TOKENS")),
            "ops_tokens": _tokens(env.get("OPS_TOKENS")),
        }
        simple = {
            "providers_file": "PROVIDERS_FILE",
            "ledger_url": "LEDGER_URL",
            "ledger_token": "LEDGER_TOKEN",
            "ledger_timeout_s": "LEDGER_TIMEOUT_S",
            "core_callback_url": "CORE_CALLBACK_URL",
            "nats_url": "NATS_URL",
            "rollout_file": "ROLLOUT_FILE",
            "rollout_cascade_percent": "ROLLOUT_CASCADE_PERCENT",
            "outbox_batch": "OUTBOX_BATCH",
            "outbox_retention_s": "OUTBOX_RETENTION_S",
            "outbox_relay_pause_s": "OUTBOX_RELAY_PAUSE_S",
            "core_callback_token": "CORE_CALLBACK_TOKEN",
            "webhook_tolerance_s": "WEBHOOK_TOLERANCE_S",
            "activity_max_retries": "ACTIVITY_MAX_RETRIES",
            "activity_retry_base_s": "ACTIVITY_RETRY_BASE_S",
            "activity_retry_cap_s": "ACTIVITY_RETRY_CAP_S",
            "fetch_interval_s": "WORKER_FETCH_INTERVAL_S",
            "timer_pump_interval_s": "TIMER_PUMP_INTERVAL_S",
            "heartbeat_s": "WORKER_HEARTBEAT_S",
            "stalled_after_s": "WORKER_STALLED_AFTER_S",
            "maintenance_every_s": "MAINTENANCE_EVERY_S",
            "sweep_grace_s": "SWEEP_GRACE_S",
            "db_acquire_timeout_s": "DB_ACQUIRE_TIMEOUT_S",
            "inline_steps": "INLINE_STEPS",
            "workflow_definitions": "WORKFLOW_DEFINITIONS",
            "health_every_s": "HEALTH_EVERY_S",
            "health_max_wait_s": "HEALTH_MAX_WAIT_S",
            "rollout_health_routing": "ROLLOUT_HEALTH_ROUTING",
        }
        for field, var in simple.items():
            if var in env:
                values[field] = env[var]
        return cls.model_validate(values)

    def providers(self) -> dict[str, ProviderConfig]:
        return load_providers(self.providers_file)
