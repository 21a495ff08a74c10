"""The rollout gate: single-shot (the old path), the cascade, or the cascade routed
by provider health, per withdrawal.

The case study's own lesson: the cutover should have been gated, so that a
regression is bounded. The gate is live configuration (service/live_config.py):
a versioned row in PostgreSQL, seeded from `ROLLOUT_FILE` on an empty database and
changed through the ops API, `service.ops config` and the console.

How a withdrawal gets its policy:
1. its **cohort**: a merchant override wins; otherwise a stable hash of the order
   id puts it in a percentage bucket (a replay always gets the same answer), and
   the `health_routing` switch (on by default) says which cascade;
2. its **policy**: the cohort's own, unless the cohort was moved back
   (`moved_back`, set by the cohort guard, service/cohort_guard.py, or by a
   person), when it is the policy the cohort was moved back to.
The decision, its reason and the configuration version are stored on the
withdrawal, which keeps them to the end.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Policy(StrEnum):
    HEALTH_CASCADE = "health_cascade"  # skips providers whose circuit is open
    CASCADE = "cascade"  # every provider in fee order
    SINGLE_SHOT = "single_shot"

    @property
    def cascades(self) -> bool:
        return self is not Policy.SINGLE_SHOT


CASCADE_COHORTS = (Policy.HEALTH_CASCADE, Policy.CASCADE)  # what the guard watches
CONTROL = Policy.SINGLE_SHOT  # what it compares them with


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GuardSettings(_Strict):
    """The cohort guard's rule (service/cohort_guard.py): a cascade cohort
    significantly worse than its control over `window_s`, with at least
    `min_sample` settled withdrawals (final, or waiting in a manual check) in each, is
    moved back to `fallback`."""

    enabled: bool = True
    window_s: float = Field(3600.0, gt=0)
    min_sample: int = Field(200, ge=10)
    # One-sided z for "significantly worse" (3.09: alpha 0.001), strict because
    # the guard tests again and again.
    z: float = Field(3.09, gt=0)
    # How much worse than control a cohort may be before it counts. A cascade
    # tries more providers, so it meets more manual checks than single-shot does.
    success_margin: float = Field(0.0, ge=0, le=1)
    manual_margin: float = Field(0.05, ge=0, le=1)
    fallback: Policy = Policy.SINGLE_SHOT


class RolloutConfig(_Strict):
    """The gate as stored: one JSON document, one version per change."""

    cascade_percent: int = Field(100, ge=0, le=100)
    health_routing: bool = True
    merchants: dict[str, Policy] = Field(default_factory=dict)
    # cohort -> the policy its new withdrawals get instead of the cohort's own
    moved_back: dict[Policy, Policy] = Field(default_factory=dict)
    guard: GuardSettings = GuardSettings()
    # per cohort, replacing `guard` for that cohort (e.g. {"cascade": {"enabled": false}})
    guard_cohorts: dict[Policy, GuardSettings] = Field(default_factory=dict)

    def guard_for(self, cohort: Policy) -> GuardSettings:
        return self.guard_cohorts.get(cohort, self.guard)

    def moving_back(self, cohort: Policy, to: Policy) -> RolloutConfig:
        return self.model_copy(update={"moved_back": {**self.moved_back, cohort: to}})

    def restoring(self, cohort: Policy) -> RolloutConfig:
        kept = {c: p for c, p in self.moved_back.items() if c != cohort}
        return self.model_copy(update={"moved_back": kept})

    @classmethod
    def from_file(
        cls, path: Path | None, percent: int | None = None, health_routing: bool | None = None
    ) -> RolloutConfig:
        """`ROLLOUT_FILE` (TOML, this model's fields: cascade_percent, health_routing,
        [merchants] id = "health_cascade"|"cascade"|"single_shot", [guard] ...), with
        `ROLLOUT_CASCADE_PERCENT` and `ROLLOUT_HEALTH_ROUTING` overriding the file.
        Only ever the seed of an empty database."""
        raw: dict[str, Any] = tomllib.loads(path.read_text()) if path else {}
        if percent is not None:
            raw["cascade_percent"] = percent
        if health_routing is not None:
            raw["health_routing"] = health_routing
        return cls.model_validate(raw)


@dataclass(frozen=True)
class Decision:
    policy: Policy
    reason: str
    cohort: Policy


@dataclass(frozen=True)
class RolloutGate:
    """One version of the rollout configuration, deciding."""

    config: RolloutConfig = field(default_factory=RolloutConfig)
    version: int | None = None  # None: not from the database (tests, tools)

    def decide(self, merchant_id: str, order_id: str) -> Decision:
        cohort, reason = self._cohort(merchant_id, order_id)
        moved = self.config.moved_back.get(cohort)
        if moved is not None and moved is not cohort:
            return Decision(moved, f"{reason};moved_back:{cohort}->{moved}", cohort)
        return Decision(cohort, reason, cohort)

    def _cohort(self, merchant_id: str, order_id: str) -> tuple[Policy, str]:
        override = self.config.merchants.get(merchant_id)
        if override is not None:
            return override, f"merchant:{merchant_id}"
        bucket = int.from_bytes(hashlib.sha256(order_id.encode()).digest()[:4], "big") % 100
        percent = self.config.cascade_percent
        if bucket >= percent:
            return Policy.SINGLE_SHOT, f"bucket:{bucket}>={percent}"
        cascade = Policy.HEALTH_CASCADE if self.config.health_routing else Policy.CASCADE
        return cascade, f"bucket:{bucket}<{percent}"


EVERYONE_ON_CASCADE = RolloutGate()
