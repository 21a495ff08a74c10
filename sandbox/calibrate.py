"""What the demo will measure on a market, predicted in a second without a stack.

    python -m sandbox.calibrate config/markets/default.toml --seeds 7 42 101
    python -m sandbox.calibrate config/markets/default.toml --sweep 200

Every create call's fate comes from the market seed and the order alone
(sandbox/provider_sim.py, `order_rng`), and the demo's --seed picks each triple's
cascade and amount (sandbox/demo.py), so the outcome of each withdrawal can be
replayed here: single-shot takes the first provider's fate; the cascade moves on
after a decline, an order that failed or an ambiguous answer with no order, and
stops at a success or at an order that never answers (a manual check). That is
the cascade's rule on a healthy market; an outage (a clock-driven fault) and the
health-aware cascade's circuits depend on timing, so only a real demo measures
them. Used to calibrate config/markets/default.toml; the demo confirms it.
"""

from __future__ import annotations

import argparse
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.demo_report import outside_case_study
from sandbox.market import MarketModel, draw, parse_market_file
from sandbox.scenarios import ScenarioError, eligible_cascade, load

POLICIES = 3  # the demo's triples: single-shot, cascade, health-aware cascade


@dataclass(frozen=True)
class Prediction:
    seed: int
    single_shot: float  # success rates
    cascade: float
    manual: float  # the cascade's withdrawals left in manual check

    @property
    def lift(self) -> float:
        return self.cascade / self.single_shot if self.single_shot else float("inf")

    def within_case_study(self) -> bool:
        return not outside_case_study(self.single_shot, self.cascade, self.manual)


def fate(models: dict[str, MarketModel], market_seed: int, provider: str, amount: str) -> str:
    """ok, fail (the cascade moves on) or manual: the provider_sim's draw, replayed."""
    model = models[provider]
    rng = random.Random(f"{market_seed}:{provider}:{amount}:EUR")
    wave_at = rng.uniform(0, model.swing_period_s)
    phase = (zlib.crc32(provider.encode()) % 628) / 100
    fated = draw(model, rng, wave_at, phase)
    if fated.outcome in ("decline", "ambiguous_no_order"):
        return "fail"
    if fated.outcome == "never_answers":
        return "manual"
    return "ok" if fated.final_status == "succeeded" else "fail"


def predict(market: dict[str, Any], seed: int, count: int = 300) -> Prediction:
    models = parse_market_file(market)
    market_seed = int(market.get("market_seed", 1))
    rng = random.Random(seed)
    triples = max(count // POLICIES, 1)
    single = cascade = manual = 0
    for _ in range(triples):
        # The same draws, in the same order, as the demo's submit_batch.
        providers = eligible_cascade(market, rng)
        amount = f"{rng.randint(5, 500)}.{rng.randint(0, 99):02d}"
        single += fate(models, market_seed, providers[0], amount) == "ok"
        for provider in providers:
            result = fate(models, market_seed, provider, amount)
            if result != "fail":
                break
        cascade += result == "ok"
        manual += result == "manual"
    return Prediction(seed, single / triples, cascade / triples, manual / triples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("market", type=Path, help="a market file (config/markets/*.toml)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[7, 42, 101])
    parser.add_argument("--sweep", type=int, default=0, help="also seeds 1..N, summed up")
    parser.add_argument("--count", type=int, default=300, help="withdrawals, as the demo's")
    args = parser.parse_args()
    try:
        market = load(args.market).market
    except ScenarioError as exc:
        parser.error(str(exc))
    for seed in args.seeds:
        p = predict(market, seed, args.count)
        print(
            f"seed {seed:>5}: single-shot {p.single_shot:6.1%}  cascade {p.cascade:6.1%}"
            f"  lift {p.lift:4.1f}x  manual {p.manual:5.1%}"
            f"  {'within' if p.within_case_study() else 'OUTSIDE'} the case study's figures"
        )
    if args.sweep:
        sweep = [predict(market, seed, args.count) for seed in range(1, args.sweep + 1)]
        mean = {
            k: sum(getattr(p, k) for p in sweep) / len(sweep)
            for k in ("single_shot", "cascade", "manual")
        }
        within = sum(p.within_case_study() for p in sweep)
        print(
            f"seeds 1..{args.sweep}: mean single-shot {mean['single_shot']:.1%},"
            f" cascade {mean['cascade']:.1%}, manual {mean['manual']:.1%};"
            f" {within} of {len(sweep)} within the case study's figures"
        )


if __name__ == "__main__":
    main()
