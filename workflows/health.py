"""A provider's circuit, from the outcomes of our own calls to it. Pure.

    closed -(failures / calls in the window >= ratio, with enough calls)-> open
    open -(open_s passed)-> half_open (a few probe attempts may go through)
    half_open -(a probe succeeded)-> closed | -(a probe failed)-> open again

The window counts only outcomes since the circuit's last change, so failures
that opened it cannot open it again once it has closed. Which outcomes count as
failures is the provider's rule: by default errors and silence (ambiguous
answers, timed-out webhooks, orders that failed), not declines, which a cheap
provider gives most of the time and quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

SUCCESSES = frozenset({"accepted", "succeeded"})
DEFAULT_FAILURES = frozenset({"ambiguous", "timed_out", "failed"})
OUTCOMES = SUCCESSES | DEFAULT_FAILURES | {"declined", "throttled"}


@dataclass(frozen=True)
class HealthRules:
    window_s: float = 60.0
    min_calls: int = 20
    max_failure_ratio: float = 0.5
    open_s: float = 30.0
    probes: int = 3
    failures: frozenset[str] = DEFAULT_FAILURES


@dataclass(frozen=True)
class Circuit:
    state: str  # closed | open | half_open
    since: datetime
    probe_at: datetime | None = None
    probes_left: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class Tally:
    """Outcomes since max(now - window, the circuit's last change), by kind."""

    counts: dict[str, int] = field(default_factory=dict)

    def failures(self, rules: HealthRules) -> int:
        return sum(n for kind, n in self.counts.items() if kind in rules.failures)

    def successes(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind in SUCCESSES)

    def calls(self) -> int:
        return sum(self.counts.values())


def next_circuit(circuit: Circuit, tally: Tally, rules: HealthRules, now: datetime) -> Circuit:
    """The circuit after looking at `tally` at `now` (the same object: no change)."""
    failures = tally.failures(rules)
    if circuit.state == "closed":
        calls = tally.calls()
        if calls >= rules.min_calls and failures / calls >= rules.max_failure_ratio:
            return _open(now, rules, f"{failures} of {calls} calls failed")
        return circuit
    if circuit.state == "open":
        if circuit.probe_at is not None and now >= circuit.probe_at:
            return Circuit("half_open", now, None, rules.probes, "probing")
        return circuit
    if tally.successes():
        return Circuit("closed", now, reason="a probe succeeded")
    if failures:
        return _open(now, rules, "a probe failed")
    return circuit


def _open(now: datetime, rules: HealthRules, reason: str) -> Circuit:
    return Circuit("open", now, now + timedelta(seconds=rules.open_s), 0, reason)


def take_probe(circuit: Circuit) -> Circuit | None:
    """A half-open circuit with one probe fewer, or None when none is left."""
    if circuit.state != "half_open" or circuit.probes_left <= 0:
        return None
    return replace(circuit, probes_left=circuit.probes_left - 1)
