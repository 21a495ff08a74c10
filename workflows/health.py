"""A provider's circuit, from the outcomes of our own calls to it. Pure.

    closed -(failures / calls in the window >= ratio, with enough calls)-> open
    open -(open_s passed)-> half_open (a few probe attempts may go through)
    half_open -(a probe failed)-> open again | -(a probe's order succeeded, or it
        was declined at once: the provider is answering)-> closed
    half_open, every probe handed out and none answered in open_s -> new probes

The ratio is failures per call (a call is one create answer: an order accepted
and failed later is one call and one failure). The window counts only outcomes
since the circuit's last change, so failures that opened it cannot open it
again once it has closed. Which outcomes count as
failures is the provider's rule: by default errors and silence (ambiguous
answers, timed-out webhooks, orders that failed), not declines, which a cheap
provider gives most of the time and quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

# A call is one create answer; what becomes of an accepted order comes later.
CALLS = frozenset({"accepted", "declined", "ambiguous", "throttled"})
SUCCESSES = frozenset({"accepted", "succeeded"})
DEFAULT_FAILURES = frozenset({"ambiguous", "timed_out", "failed"})
OUTCOMES = CALLS | SUCCESSES | DEFAULT_FAILURES
# What a probe must hear to close the circuit: an order settled, or a quick no.
# An acceptance alone proves little: a provider in trouble may fail it later.
SETTLED_WELL = frozenset({"succeeded", "declined"})


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

    def settled_well(self, rules: HealthRules) -> int:
        good = SETTLED_WELL - rules.failures
        return sum(n for kind, n in self.counts.items() if kind in good)

    def calls(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind in CALLS)


def next_circuit(circuit: Circuit, tally: Tally, rules: HealthRules, now: datetime) -> Circuit:
    """The circuit after looking at `tally` at `now` (the same object: no change)."""
    failures = tally.failures(rules)
    if circuit.state == "closed":
        calls = tally.calls()
        if calls >= rules.min_calls and failures >= rules.max_failure_ratio * calls:
            return _open(now, rules, f"{failures} of {calls} calls failed")
        return circuit
    if circuit.state == "open":
        if circuit.probe_at is not None and now >= circuit.probe_at:
            return Circuit("half_open", now, None, rules.probes, "probing")
        return circuit
    if failures:
        return _open(now, rules, "a probe failed")
    if tally.settled_well(rules):
        return Circuit("closed", now, reason="a probe settled")
    if circuit.probes_left <= 0 and now >= circuit.since + timedelta(seconds=rules.open_s):
        return Circuit("half_open", now, None, rules.probes, "probing again (no answer)")
    return circuit


def _open(now: datetime, rules: HealthRules, reason: str) -> Circuit:
    return Circuit("open", now, now + timedelta(seconds=rules.open_s), 0, reason)


def take_probe(circuit: Circuit) -> Circuit | None:
    """A half-open circuit with one probe fewer, or None when none is left."""
    if circuit.state != "half_open" or circuit.probes_left <= 0:
        return None
    return replace(circuit, probes_left=circuit.probes_left - 1)
