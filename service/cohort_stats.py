"""The cohort guard's statistics (service/cohort_guard.py): is a cascade cohort
significantly worse than its control? Pure: numbers in, a finding out.

Two one-sided two-proportion z-tests with a margin (a non-inferiority test), on
the settled withdrawals of a window:
- success: worse when (p_control - p_cohort - success_margin) / se > z;
- manual checks: worse when (p_cohort - p_control - manual_margin) / se > z;
and only when both arms have at least `min_sample` withdrawals.

The standard error is *unpooled* (each arm's own variance): the hypothesis
tested is "the cohort is worse by no more than the margin", not "the rates are
equal", and pooling the two arms is only right under equality; with a margin it
would misstate the variance exactly where the rates differ. Each rate is
Agresti-Caffo's (x + 1) / (n + 2): a control with no manual check at all is
normal, and a raw rate of 0 (or 1) in both arms would make se 0 and any
difference infinitely significant; the adjustment also keeps the unpooled test
close to its nominal error rate at small counts. At `min_sample` (200 by
default) it moves a rate by under half a point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.rollout import GuardSettings

SUCCESS = "success"
MANUAL = "manual"
REASONS = (SUCCESS, MANUAL)


@dataclass(frozen=True)
class Arm:
    """The settled withdrawals of one policy in the window."""

    n: int
    succeeded: int
    manual: int

    def rate(self, what: str) -> float:
        hits = self.succeeded if what == SUCCESS else self.manual
        return hits / self.n if self.n else 0.0


def excess_z(worse_hits: int, worse_n: int, base_hits: int, base_n: int, margin: float) -> float:
    """How many standard errors the first rate exceeds the second by more than
    `margin` (negative: it does not), with Agresti-Caffo's adjusted rates."""
    p_worse = (worse_hits + 1) / (worse_n + 2)
    p_base = (base_hits + 1) / (base_n + 2)
    se = math.sqrt(p_worse * (1 - p_worse) / (worse_n + 2) + p_base * (1 - p_base) / (base_n + 2))
    return (p_worse - p_base - margin) / se


@dataclass(frozen=True)
class Finding:
    """The cohort is significantly worse than control on `what`."""

    what: str  # SUCCESS or MANUAL
    z: float
    cohort: Arm
    control: Arm
    margin: float

    def describe(self) -> str:
        return (
            f"{self.what} rate {self.cohort.rate(self.what):.1%} (n={self.cohort.n}) vs control"
            f" {self.control.rate(self.what):.1%} (n={self.control.n}),"
            f" margin {self.margin:.1%}, z={self.z:.2f}"
        )


def judge(cohort: Arm, control: Arm, rule: GuardSettings) -> list[Finding]:
    """What the cohort is significantly worse on (success first), or nothing when
    either arm is below `min_sample`: too few to tell, so never acted on."""
    if min(cohort.n, control.n) < rule.min_sample:
        return []
    # A success shortfall is an excess of non-success: the same test, turned round.
    z_success = excess_z(
        cohort.n - cohort.succeeded,
        cohort.n,
        control.n - control.succeeded,
        control.n,
        rule.success_margin,
    )
    z_manual = excess_z(cohort.manual, cohort.n, control.manual, control.n, rule.manual_margin)
    found = [
        Finding(SUCCESS, z_success, cohort, control, rule.success_margin),
        Finding(MANUAL, z_manual, cohort, control, rule.manual_margin),
    ]
    return [f for f in found if f.z > rule.z]
