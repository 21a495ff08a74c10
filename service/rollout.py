"""The rollout gate: single-shot (the old path), the cascade, or the cascade routed
by provider health, per withdrawal.

The case study's own lesson: the cutover should have been gated. A merchant
override wins; otherwise a stable hash of the order id puts the withdrawal in a
percentage bucket, so a replay always gets the same answer, and the global
`health_routing` switch (on by default) says which cascade. The decision and its
reason are stored on the withdrawal.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any


class Policy(StrEnum):
    HEALTH_CASCADE = "health_cascade"  # skips providers whose circuit is open
    CASCADE = "cascade"  # every provider in fee order
    SINGLE_SHOT = "single_shot"

    @property
    def cascades(self) -> bool:
        return self is not Policy.SINGLE_SHOT


@dataclass(frozen=True)
class Decision:
    policy: Policy
    reason: str


@dataclass(frozen=True)
class RolloutGate:
    cascade_percent: int = 100
    merchants: MappingProxyType[str, Policy] = field(default_factory=lambda: MappingProxyType({}))
    health_routing: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.cascade_percent <= 100:
            raise ValueError("cascade_percent must be within 0..100")

    def decide(self, merchant_id: str, order_id: str) -> Decision:
        override = self.merchants.get(merchant_id)
        if override is not None:
            return Decision(override, f"merchant:{merchant_id}")
        bucket = int.from_bytes(hashlib.sha256(order_id.encode()).digest()[:4], "big") % 100
        if bucket >= self.cascade_percent:
            return Decision(Policy.SINGLE_SHOT, f"bucket:{bucket}>={self.cascade_percent}")
        cascade = Policy.HEALTH_CASCADE if self.health_routing else Policy.CASCADE
        return Decision(cascade, f"bucket:{bucket}<{self.cascade_percent}")

    @classmethod
    def load(
        cls, path: Path | None, percent: int | None, health_routing: bool | None = None
    ) -> RolloutGate:
        """`ROLLOUT_FILE` (TOML: cascade_percent, health_routing, [merchants] id =
        "health_cascade"|"cascade"|"single_shot"), with `ROLLOUT_CASCADE_PERCENT` and
        `ROLLOUT_HEALTH_ROUTING` overriding the file."""
        raw: dict[str, Any] = tomllib.loads(path.read_text()) if path else {}
        merchants = {m: Policy(p) for m, p in raw.get("merchants", {}).items()}
        chosen = percent if percent is not None else int(raw.get("cascade_percent", 100))
        routing = health_routing if health_routing is not None else raw.get("health_routing", True)
        return cls(chosen, MappingProxyType(merchants), bool(routing))


EVERYONE_ON_CASCADE = RolloutGate()
