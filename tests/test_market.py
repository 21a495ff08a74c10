"""The sandbox's provider market model: seeded, bounded, calibrated by its rates."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sandbox.market import MarketError, MarketModel, draw, parse_market


def test_approval_swings_within_bounds() -> None:
    model = MarketModel(approval=0.3, swing=0.2, swing_period_s=10)
    values = [model.approval_at(t / 10, phase=1.0) for t in range(200)]
    assert min(values) == pytest.approx(0.1, abs=0.01)
    assert max(values) == pytest.approx(0.5, abs=0.01)
    assert MarketModel(approval=0.9, swing=0.5).approval_at(15, 0) == 1.0  # clamped


def test_draws_follow_the_configured_rates() -> None:
    model = MarketModel(
        approval=0.4,
        ambiguous_rate=0.1,
        never_answers_rate=0.05,
        accept_then_fail_rate=0.2,
        webhook_median_ms=1000,
        webhook_max_ms=5000,
    )
    rng = random.Random(7)
    draws = [draw(model, rng, 0.0, 0.0) for _ in range(20_000)]
    share = {k: v / len(draws) for k, v in Counter(d.outcome for d in draws).items()}
    assert share["ambiguous_created"] + share["ambiguous_no_order"] == pytest.approx(0.1, abs=0.01)
    assert share["never_answers"] == pytest.approx(0.05, abs=0.01)
    assert share["accepted"] == pytest.approx(0.85 * 0.4, abs=0.015)
    fails = sum(d.final_status == "failed" for d in draws) / len(draws)
    assert fails == pytest.approx(0.2, abs=0.015)
    assert max(d.settle_after_s for d in draws) <= 5.0
    assert sorted(d.settle_after_s for d in draws)[len(draws) // 2] == pytest.approx(1.0, rel=0.1)


def test_draws_are_repeatable_with_a_seed() -> None:
    model = MarketModel(approval=0.5, ambiguous_rate=0.2)
    one, two, other = random.Random(3), random.Random(3), random.Random(4)
    first = [draw(model, one, float(t), 0.5) for t in range(50)]
    assert first == [draw(model, two, float(t), 0.5) for t in range(50)]
    assert first != [draw(model, other, float(t), 0.5) for t in range(50)]


@pytest.mark.parametrize("raw", [{"approval": 1.5}, {"nope": 1}, {"swing_period_s": 0}, []])
def test_bad_market_tables_are_refused(raw: object) -> None:
    with pytest.raises(MarketError):
        parse_market(raw, "providers.x")
