"""A simulated provider market: what a `behaviour = "market"` provider does.

Each provider has a fee, an approval probability that swings over time (the
availability that changes minute to minute), latency distributions for its
answer and for its webhook, and rates of ambiguous errors, orders that never
get an answer, and orders accepted and then failed.

Repeatable: an order's draws come from a generator seeded by the market seed and
the order itself (provider, amount, currency), including where on its provider's
approval wave it falls, so the same seed gives the same outcomes whatever order
the workers reach the providers in. The demo's triples share their amount, so
each policy meets the same provider decisions (common random numbers: comparing
policies is not drowned in noise). The outage window follows the market clock,
which starts at the market's first order. What stays non-deterministic is timing
under load, and anything that depends on it: when a circuit opens, which
withdrawals probe, how long a step waited.

```toml
[providers.cheapo.market]
fee_bps = 40
approval = 0.18            # mean probability that the provider takes the order
swing = 0.12               # +/- around the mean ...
swing_period_s = 40        # ... over this (time-compressed) period
ambiguous_rate = 0.03      # 5xx/timeouts; half of them did create the order
never_answers_rate = 0.01
accept_then_fail_rate = 0.08
accept_latency_ms = [40, 400]
webhook_median_ms = 1500   # lognormal, capped at webhook_max_ms (15 min, compressed)
webhook_max_ms = 10000
outage_start_s = 5         # optional: from then (market clock: from its first order) ...
outage_end_s = 65          # ... to then, the provider is having a bad hour:
outage_mode = "fail_late"  # "timeout": create calls hang until the caller gives up;
                           # "fail_late": orders are taken, then fail after ...
outage_fail_after_ms = 4000  # ... this long (the latency a blind cascade pays);
                           # "never_answers": orders are taken and never answered
                           # (no webhook; a status check says pending)
```
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

OUTAGE_MODES = frozenset({"timeout", "fail_late", "never_answers"})


class MarketError(ValueError):
    pass


@dataclass(frozen=True)
class MarketModel:
    fee_bps: int = 50
    approval: float = 0.5
    swing: float = 0.0
    swing_period_s: float = 60.0
    ambiguous_rate: float = 0.0
    never_answers_rate: float = 0.0
    accept_then_fail_rate: float = 0.0
    accept_latency_ms: tuple[int, int] = (20, 200)
    webhook_median_ms: int = 1000
    webhook_max_ms: int = 10_000
    outage_start_s: float | None = None
    outage_end_s: float | None = None
    outage_mode: str = "timeout"
    outage_fail_after_ms: int = 4000

    def down_at(self, t: float) -> bool:
        """In its outage window at market time `t`: create calls time out."""
        if self.outage_start_s is None or self.outage_end_s is None:
            return False
        return self.outage_start_s <= t < self.outage_end_s

    def approval_at(self, t: float, phase: float) -> float:
        wave = math.sin(2 * math.pi * t / self.swing_period_s + phase)
        return min(max(self.approval + self.swing * wave, 0.0), 1.0)


@dataclass(frozen=True)
class Draw:
    """One create call's fate. `outcome` is one of: decline, ambiguous_no_order,
    ambiguous_created, never_answers, accepted."""

    answer_after_s: float
    outcome: str
    final_status: str  # for orders that exist: "succeeded" or "failed"
    settle_after_s: float


def draw(model: MarketModel, rng: random.Random, t: float, phase: float) -> Draw:
    low, high = model.accept_latency_ms
    answer = rng.uniform(low, high) / 1000
    # lognormal with the configured median, sigma 0.9: a long tail, capped
    settle = min(rng.lognormvariate(math.log(model.webhook_median_ms), 0.9), model.webhook_max_ms)
    final = "failed" if rng.random() < model.accept_then_fail_rate else "succeeded"
    roll = rng.random()
    if roll < model.ambiguous_rate:
        outcome = "ambiguous_created" if rng.random() < 0.5 else "ambiguous_no_order"
    elif roll < model.ambiguous_rate + model.never_answers_rate:
        outcome = "never_answers"
    elif rng.random() < model.approval_at(t, phase):
        outcome = "accepted"
    else:
        outcome = "decline"
    return Draw(answer, outcome, final, settle / 1000)


def parse_market(raw: Any, where: str) -> MarketModel:
    if not isinstance(raw, dict):
        raise MarketError(f"{where}.market must be a table")
    known = set(MarketModel.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise MarketError(f"{where}.market: unknown keys {sorted(unknown)}")
    values = dict(raw)
    if "accept_latency_ms" in values:
        values["accept_latency_ms"] = tuple(values["accept_latency_ms"])
    model = MarketModel(**values)
    rates = (
        model.approval,
        model.ambiguous_rate,
        model.never_answers_rate,
        model.accept_then_fail_rate,
    )
    if not all(0 <= r <= 1 for r in rates) or model.swing_period_s <= 0:
        raise MarketError(f"{where}.market: probabilities must be within 0..1")
    if model.outage_mode not in OUTAGE_MODES:
        raise MarketError(f"{where}.market: outage_mode must be one of {sorted(OUTAGE_MODES)}")
    return model


# The top-level keys of a market file (config/markets/*.toml), besides [providers];
# [demo] is the demo's own (sandbox/scenarios.py) and [health] payment-service's.
MARKET_FILE_KEYS = frozenset(
    {"market_seed", "time_compression", "webhook_sla_s", "health", "health_max_wait_s", "demo"}
)


def parse_market_file(raw: dict[str, Any]) -> dict[str, MarketModel]:
    """A whole market file's providers, checked: each has an eligibility (the share of
    withdrawals cascade-core finds it eligible for) and a valid market table. A typo
    in a calibrated file must fail loudly, not quietly fall back to a default."""
    unknown = set(raw) - MARKET_FILE_KEYS - {"providers"}
    if unknown:
        raise MarketError(f"unknown top-level keys {sorted(unknown)}")
    if not isinstance(raw.get("market_seed", 1), int):
        raise MarketError("market_seed must be an integer")
    if "webhook_sla_s" not in raw:  # every provider's SLA: no default would suit them all
        raise MarketError("webhook_sla_s is required")
    for key in ("time_compression", "webhook_sla_s", "health_max_wait_s"):
        value = raw.get(key, 1)
        if not isinstance(value, int | float) or value <= 0:
            raise MarketError(f"{key} must be a positive number")
    providers = raw.get("providers")
    if not isinstance(providers, dict) or not providers:
        raise MarketError("[providers] must be a non-empty table")
    models = {}
    for name, spec in providers.items():
        where = f"providers.{name}"
        if not isinstance(spec, dict) or set(spec) - {"eligibility", "market"}:
            raise MarketError(f"{where}: only eligibility and a market table")
        eligibility = spec.get("eligibility", 0.5)
        if not isinstance(eligibility, int | float) or not 0 <= eligibility <= 1:
            raise MarketError(f"{where}.eligibility must be within 0..1")
        models[name] = parse_market(spec.get("market"), where)
    return models
