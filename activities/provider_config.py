"""A provider's settings: the providers file (TOML), validated by pydantic.

Each provider names its adapter (activities/provider_adapters.py), its timing,
how its answers classify, when its circuit opens and what it accepts at once.
Secrets are SecretStr, so they never print in logs, reprs or error bodies.
"""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

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

    def is_final_refusal(self, status: int, code: str) -> bool:
        """A refused create is final (declined) only for these statuses and codes;
        anything else is ambiguous: the order may exist."""
        return status in self.declined_statuses and (
            self.declined_codes is None or code in self.declined_codes
        )


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
