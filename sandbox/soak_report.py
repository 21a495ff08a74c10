"""The soak's verdict: its figures, then its checks, read from the outside once the
system is quiet (sandbox/soak_checks.py, and sandbox/soak_ha.py on a cluster). The
last line is the verdict; `report` returns the exit status.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sandbox import soak_checks as checks
from sandbox.chaos import Chaos, Plan
from sandbox.client import StackClient
from sandbox.soak_ha import Core, Failovers
from sandbox.soak_ha import checks as ha_checks
from sandbox.soak_ha import figures as ha_figures
from sandbox.stack import Stack


@dataclass(frozen=True)
class Run:
    """What a soak ran against, and what it sent and did."""

    client: StackClient
    stack: Stack
    url: str
    nats_url: str
    plan: Plan
    chaos: Chaos
    answers: Counter[int]
    submitted: int


def report(
    run: Run,
    quiet_after: float,
    quiet_timeout: float,
    wall: float,
    ha: tuple[Failovers, Core] | None,
) -> int:
    found = outside_checks(run, quiet_after, quiet_timeout, ha)
    outcomes = checks.outcome_counts(run.url)
    manual = checks.manual_checks_by_cause(run.client, run.url)
    avoidable = sum(n for cause, n in manual.items() if not cause.endswith("order pending"))
    found.append(
        checks.Check("manual checks whose provider had settled", avoidable, avoidable == 0)
    )
    print()
    print(f"{'figure':<64} {'value':>14}")
    for name, value in figures(run, outcomes, manual, wall, ha):
        print(f"{name:<64} {value!s:>14}")
    print()
    for check in found:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name:<59} {check.value!s:>14}")
    failed = [c.name for c in found if not c.ok]
    verdict = "PASSED" if not failed else "FAILED: " + "; ".join(failed)
    print(f"\nsoak seed {run.plan.seed}, {run.submitted} withdrawals: {verdict}")
    return 0 if not failed else 1


def outside_checks(
    run: Run, quiet_after: float, quiet_timeout: float, ha: tuple[Failovers, Core] | None
) -> list[checks.Check]:
    """Money, liveness, audit and events, seen from outside, then the run's own health."""
    client, chaos, url = run.client, run.chaos, run.url
    api_errors = api_5xx_other_than_503(run.stack.workdir / "api.log")
    return [
        *checks.money_checks(client, url),
        *checks.liveness_checks(url),
        checks.audit_replay(url),
        checks.audit_references(url),
        *checks.outbox_checks(url, run.nats_url),
        checks.Check(
            "worker exits other than the ones killed",
            chaos.unexpected_exits,
            chaos.unexpected_exits == 0,
        ),
        checks.Check("API 5xx other than 503", api_errors, api_errors == 0),
        checks.Check(
            "seconds to quiet after the last fault",
            f"{quiet_after:.0f}",
            quiet_after < min(quiet_timeout, 120),
        ),
        *(ha_checks(*ha, client, url) if ha else []),
    ]


def figures(
    run: Run,
    outcomes: dict[str, int],
    manual: dict[str, int],
    wall: float,
    ha: tuple[Failovers, Core] | None,
) -> list[tuple[str, object]]:
    """The run's figures, as (name, value) rows: what went in, what came out, what was done."""
    chaos = run.chaos
    return [
        ("withdrawals submitted", run.submitted),
        *((f"  {k}", v) for k, v in outcomes.items()),
        ("API answers (every try; 0: no answer)", dict(sorted(run.answers.items()))),
        ("workers SIGKILLed (and replaced)", chaos.kills),
        ("API SIGKILLed mid-step (and restarted)", chaos.api_kills),
        ("kills dropped (due while a database fault held the schedule)", chaos.kills_skipped),
        ("PostgreSQL crash-restarts" if ha is None else "primary failovers", chaos.pg_restarts),
        *(ha_figures(*ha) if ha else []),
        ("nats-server outage, s", run.plan.nats_down_s),
        ("stale or duplicate webhooks resent", chaos.webhooks_resent),
        (
            "live configuration changes applied (refused)",
            f"{chaos.config.applied} ({chaos.config.refused})",
        ),
        ("cancels by cascade-core", chaos.cancels),
        *((f"manual check: {cause}", n) for cause, n in manual.items()),
        ("wall time, s", f"{wall:.0f}"),
    ]


def api_5xx_other_than_503(log: Path) -> int:
    statuses = re.findall(r'HTTP/1\.1\\?" (5\d\d)', log.read_text(errors="replace"))
    return sum(s != "503" for s in statuses)
