"""What the cohort guard did during a demo run (service/cohort_guard.py), read back
from the database afterwards: the audited rollout versions it wrote (live_config,
changed_by `guard:cohort`) and the withdrawals (order_queues).

Per cohort it moved back: when (after the run's first submission, in demo seconds
and, through the market's time compression, in real time), its reason (the
figures it judged on), and how many withdrawals went through the bad cohort before
the move: assigned that cohort and running its policy. The database is the record a
person would read in an incident; the demo's own clock would not survive a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from service.cohort_guard import ACTOR
from service.rollout import CASCADE_COHORTS

# Every rollout version in order, with the one before's moved_back beside it: a guard
# version's newly moved cohorts are what it adds. The demo's database is fresh, so
# one scope (CONFIG_SCOPE) is all there is.
_VERSIONS = """
SELECT version, changed_by, reason, changed_at, body,
       lag(body->'moved_back') OVER (ORDER BY version) AS before
FROM live_config WHERE name = 'rollout' ORDER BY version
"""

# Withdrawals of `cohort` that ran its own policy: before the move (`through`), in
# manual check among those, and after it (`late`: submitted while the processes were
# still applying the new version, which takes up to a second or two).
_THROUGH = """
SELECT count(*) FILTER (WHERE q.created_at < %(at)s) AS through,
       count(*) FILTER (WHERE q.created_at < %(at)s AND EXISTS (SELECT 1 FROM order_tasks t
                        WHERE t.queue_id = q.id AND t.status = 'MANUAL_CHECK')) AS manual,
       count(*) FILTER (WHERE q.created_at >= %(at)s) AS late
FROM order_queues q WHERE q.cohort = %(cohort)s AND q.policy = %(cohort)s
"""


_SHOWN = ("window_s", "min_sample", "z", "success_margin", "manual_margin")


@dataclass(frozen=True)
class GuardMove:
    cohort: str
    to: str
    version: int
    after_s: float  # since the run's first submission, demo seconds
    reason: str
    through: int  # withdrawals that ran the cohort's policy, submitted before the move
    manual: int  # of those, waiting in a manual check at the end
    late: int  # that ran it, submitted after the move (the change applying)


def guard_moves(url: str) -> tuple[dict[str, Any], list[GuardMove]]:
    """The guard settings the run started with, and every move the guard made."""
    with psycopg.connect(url) as conn:
        versions = conn.execute(_VERSIONS).fetchall()
        first = conn.execute("SELECT min(created_at) FROM order_queues").fetchone()
        started = first[0] if first else None
        moves = []
        for version, actor, reason, at, body, before in versions:
            if actor != ACTOR or started is None:
                continue
            for cohort, to in _newly_moved(body.get("moved_back", {}), before or {}):
                moves.append(_move(conn, cohort, to, version, reason, at, started))
    settings = versions[0][4].get("guard", {}) if versions else {}
    return settings, moves


def _newly_moved(moved: dict[str, str], before: dict[str, str]) -> list[tuple[str, str]]:
    def is_moved(back: dict[str, str], cohort: str) -> bool:
        return back.get(cohort, cohort) != cohort

    return [(c, to) for c, to in moved.items() if is_moved(moved, c) and not is_moved(before, c)]


def _move(
    conn: psycopg.Connection[Any],
    cohort: str,
    to: str,
    version: int,
    reason: str,
    at: datetime,
    started: datetime,
) -> GuardMove:
    row = conn.execute(_THROUGH, {"at": at, "cohort": cohort}).fetchone()
    through, manual, late = row if row else (0, 0, 0)
    after = (at - started).total_seconds()
    return GuardMove(cohort, to, version, after, reason, through, manual, late)


def real_time(demo_s: float, compression: float) -> str:
    real = demo_s * compression
    return f"{real / 60:.0f} min real" if real >= 120 else f"{real:.0f} s real"


def describe(settings: dict[str, Any], moves: list[GuardMove], compression: float) -> str:
    """The per-move lines and the one-line verdict, for the demo's output."""
    shown = ", ".join(f"{k} {settings[k]}" for k in _SHOWN if k in settings) or "defaults"
    lines = [f"cohort guard ({shown}):"]
    for m in moves:
        lines += [
            f"  {m.cohort} moved back to {m.to} {m.after_s:.1f} s after the first submission"
            f" ({real_time(m.after_s, compression)}), rollout version {m.version}",
            f"    reason: {m.reason}",
            f"    {m.through} withdrawals went through {m.cohort} before the move,"
            f" {m.manual} of them left in manual check",
        ]
        if m.late:
            lines.append(f"    and {m.late} submitted while the change was being applied")
    return "\n".join([*lines, verdict(moves)])


def verdict(moves: list[GuardMove]) -> str:
    """One line: e.g. "guard: moved cascade back after 23 s (34 withdrawals through
    it), health_cascade after 25 s (31)"."""
    if not moves:
        return "guard: no cohort moved back"
    first, *rest = moves
    each = [
        f"{first.cohort} back after {first.after_s:.0f} s ({first.through} withdrawals through it)"
    ]
    each += [f"{m.cohort} after {m.after_s:.0f} s ({m.through})" for m in rest]
    kept = [str(c) for c in CASCADE_COHORTS if c not in {m.cohort for m in moves}]
    return "guard: moved " + ", ".join(each) + "".join(f"; {c} not moved back" for c in kept)


def summary(url: str, compression: float) -> str:
    settings, moves = guard_moves(url)
    return describe(settings, moves, compression)
