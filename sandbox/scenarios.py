"""The demo's scenarios: one simulated market each, a file under config/markets/.

`python -m sandbox.demo --scenario NAME` (`make demo SCENARIO=NAME`) runs
config/markets/NAME.toml; `--market PATH` runs any file of the same shape. A
scenario file is a market (sandbox/market.py: each provider's eligibility and
market table, and the payment-service settings that follow the market's time
compression), and optionally a [demo] table, for what the demo does differently
in that scenario:

```toml
[demo]
description = "..."        # one line, printed at the start and in the report
fault = "..."              # what goes wrong in this market, if anything
guard_every_s = 1          # GUARD_EVERY_S for the demo's workers: how often the guard judges
[demo.rollout]             # merged over the demo's rollout file (service/rollout.py's
cascade_percent = 100      # RolloutConfig: [demo.rollout.guard] for the cohort guard)
```

A scenario that needs more of the demo adds a field to DemoOptions: unknown keys
are refused, so a typo fails loudly rather than running the wrong demo.
"""

from __future__ import annotations

import json
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activities.provider_config import HealthConfig
from devstack.embedded import PROJECT_ROOT
from sandbox.market import MarketError, parse_market_file
from sandbox.stack import ProviderSpec
from service.rollout import RolloutConfig

MARKETS_DIR = PROJECT_ROOT / "config" / "markets"
DEFAULT_SCENARIO = "default"


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class DemoOptions:
    description: str = ""
    fault: str = ""
    rollout: dict[str, Any] = field(default_factory=dict)
    # The demo's workers' GUARD_EVERY_S; None: the service's default (30 s). Here, not
    # in the market's settings (market_env), because the soak runs on these markets too.
    guard_every_s: float | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    market: dict[str, Any]  # the file as read: what market_specs and the cascades use
    demo: DemoOptions

    def rollout_toml(self, merchants: dict[str, str]) -> str:
        """The demo's rollout file: its merchants (one per policy, the triples'
        comparison) with the scenario's rollout settings over them."""
        return to_toml(rollout_document(merchants, self.demo.rollout))

    def demo_env(self) -> dict[str, str]:
        """payment-service settings of the demo's processes that the [demo] table sets."""
        every = self.demo.guard_every_s
        return {} if every is None else {"GUARD_EVERY_S": str(every)}


def names() -> list[str]:
    return sorted(p.stem for p in MARKETS_DIR.glob("*.toml"))


def resolve(name: str) -> Path:
    path = MARKETS_DIR / f"{name}.toml"
    if "/" in name or not path.is_file():
        raise ScenarioError(f"no scenario {name!r}: one of {', '.join(names())}")
    return path


def load(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text())
        parse_market_file(raw)
    except (OSError, tomllib.TOMLDecodeError, MarketError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    try:
        HealthConfig.model_validate(raw.get("health", {}))
        demo = _demo_options(raw.get("demo", {}))
        RolloutConfig.model_validate(rollout_document({}, demo.rollout))
    except ValueError as exc:  # pydantic's ValidationError is one
        raise ScenarioError(f"{path}: {exc}") from None
    return Scenario(path.stem, path, raw, demo)


def _demo_options(raw: Any) -> DemoOptions:
    if not isinstance(raw, dict):
        raise ScenarioError("[demo] must be a table")
    known = set(DemoOptions.__dataclass_fields__)
    if set(raw) - known:
        raise ScenarioError(f"[demo]: unknown keys {sorted(set(raw) - known)}")
    if not all(isinstance(raw.get(k, ""), str) for k in ("description", "fault")):
        raise ScenarioError("[demo]: description and fault are strings")
    if not isinstance(raw.get("rollout", {}), dict):
        raise ScenarioError("[demo.rollout] must be a table")
    every = raw.get("guard_every_s", 1)
    if isinstance(every, bool) or not isinstance(every, int | float) or every <= 0:
        raise ScenarioError("[demo]: guard_every_s must be a positive number of seconds")
    return DemoOptions(**raw)


def rollout_document(merchants: dict[str, str], rollout: dict[str, Any]) -> dict[str, Any]:
    return {**rollout, "merchants": {**merchants, **rollout.get("merchants", {})}}


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def to_toml(document: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for a rollout file: scalars and lists as JSON (valid TOML for
    these), nested tables as [a.b] sections. The standard library reads TOML only."""
    scalars, tables = [], []
    for key, value in document.items():
        name = key if _BARE_KEY.match(key) else json.dumps(key)
        if isinstance(value, dict):
            tables.append(to_toml(value, f"{prefix}{name}."))
        else:
            scalars.append(f"{name} = {json.dumps(value)}\n")
    head = f"[{prefix[:-1]}]\n" if prefix else ""
    return head + "".join(scalars) + "".join(tables)


# What the stack and cascade-core's stand-in make of a market (the demo's and the soak's).


def market_specs(market: dict[str, Any]) -> list[ProviderSpec]:
    timing = {
        "webhook_sla_s": market["webhook_sla_s"],
        "recheck_base_s": 0.5,
        "recheck_max_attempts": 4,
        "recheck_cap_s": 4.0,
    }
    return [
        ProviderSpec(
            name,
            behaviour="market",
            market=spec["market"],
            timing=timing,
            health=market.get("health"),
        )
        for name, spec in market["providers"].items()
    ]


def market_env(market: dict[str, Any]) -> dict[str, str]:
    """payment-service settings that follow the market's time compression."""
    return {"HEALTH_MAX_WAIT_S": str(market.get("health_max_wait_s", 900))}


def eligible_cascade(market: dict[str, Any], rng: random.Random) -> list[str]:
    """Which providers cascade-core finds eligible, cheapest first (never empty)."""
    providers = market["providers"]
    chosen = [n for n, p in providers.items() if rng.random() < p.get("eligibility", 0.5)]
    chosen = chosen or [min(providers, key=lambda n: providers[n]["market"]["fee_bps"])]
    return sorted(chosen, key=lambda n: providers[n]["market"]["fee_bps"])
