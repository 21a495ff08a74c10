"""The cohort guard's statistics: known numbers, the rule's edges, and its error
rates on seeded draws (pure, no database)."""

from __future__ import annotations

import random

import pytest

from service.cohort_stats import MANUAL, SUCCESS, Arm, excess_z, judge
from service.rollout import GuardSettings

RULE = GuardSettings()  # min_sample 200, z 3.09, margins 0 (success) and 0.05 (manual)


def test_excess_z_matches_numbers_worked_by_hand() -> None:
    # 50/200 against 20/200: adjusted 51/202 and 21/202, difference 30/202 = 0.148515;
    # se = sqrt(0.252475 * 0.747525 / 202 + 0.103960 * 0.896040 / 202) = 0.037356.
    assert excess_z(50, 200, 20, 200, 0.0) == pytest.approx(3.9757, abs=1e-4)
    # 40/400 against 8/400 with a 5-point margin: (0.079602 - 0.05) / 0.016801.
    assert excess_z(40, 400, 8, 400, 0.05) == pytest.approx(1.7619, abs=1e-4)
    assert excess_z(40, 400, 8, 400, 0.0) == pytest.approx(4.7379, abs=1e-4)


def test_equal_extreme_rates_are_no_difference_rather_than_a_division_by_zero() -> None:
    assert excess_z(0, 300, 0, 300, 0.0) == 0.0  # neither arm ever met a manual check
    assert excess_z(300, 300, 0, 300, 0.0) > 100  # and one always did


def test_a_success_shortfall_is_found_with_its_figures() -> None:
    found = judge(Arm(200, 150, 0), Arm(200, 180, 0), RULE)
    assert [(f.what, round(f.z, 2)) for f in found] == [(SUCCESS, 3.98)]
    assert found[0].describe() == (
        "success rate 75.0% (n=200) vs control 90.0% (n=200), margin 0.0%, z=3.98"
    )


def test_the_manual_rate_counts_only_beyond_its_margin() -> None:
    cohort, control = Arm(400, 360, 40), Arm(400, 360, 8)  # 10% against 2% manual
    assert judge(cohort, control, RULE) == []  # 8 points, but within 5 + noise
    strict = RULE.model_copy(update={"manual_margin": 0.0})
    assert [f.what for f in judge(cohort, control, strict)] == [MANUAL]


def test_a_better_cohort_is_never_worse() -> None:
    assert judge(Arm(400, 390, 0), Arm(400, 200, 200), RULE) == []


def test_too_few_in_either_arm_is_never_acted_on() -> None:
    dreadful, fine = Arm(199, 0, 199), Arm(5000, 4900, 0)
    assert judge(dreadful, fine, RULE) == []
    assert judge(Arm(5000, 0, 5000), Arm(199, 199, 0), RULE) == []
    assert [f.what for f in judge(Arm(200, 0, 200), fine, RULE)] == [SUCCESS, MANUAL]


def _draw(rng: random.Random, n: int, p_success: float) -> Arm:
    succeeded = sum(rng.random() < p_success for _ in range(n))
    return Arm(n, succeeded, 0)


def test_it_rarely_moves_an_equal_cohort_and_nearly_always_a_bad_one() -> None:
    """Seeded draws at the default rule: about 1 in 1000 false alarms by design
    (z 3.09, one-sided), and a 15-point shortfall found at 300 a side."""
    rng = random.Random(22)
    trials = 600
    false_alarms = sum(
        bool(judge(_draw(rng, 300, 0.9), _draw(rng, 300, 0.9), RULE)) for _ in range(trials)
    )
    found = sum(
        bool(judge(_draw(rng, 300, 0.75), _draw(rng, 300, 0.9), RULE)) for _ in range(trials)
    )
    assert false_alarms <= 3
    assert found >= 0.9 * trials
