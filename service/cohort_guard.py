"""The cohort guard: a cascade cohort significantly worse than single-shot is moved
back, automatically, for its new withdrawals (issue 22; docs/design.md "The
cohort guard", docs/ops.md "Alert: PaymentCohortMovedBack").

Every GUARD_EVERY_S, from the workers' periodic checks, it counts each watched
cohort's settled withdrawals in its window against control's
(service/cohort_stats.py has the rule). A cohort found
worse is moved back to its guard's `fallback`: one audited change of the live
rollout configuration (service/live_config.py), actor `guard:cohort`, the figures
in its reason. It changes the configuration only: a withdrawal in flight keeps
the policy it started with, to its end, and only new ones get the fallback.

A cohort stays moved back until a person restores it (`restore`: the ops API,
`service.ops config restore`). From then on the guard counts only what was
submitted after the restore: the evidence that moved it back is what that
person overruled, and counting it again would move the cohort straight back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Gauge

from engine.journal import Conn
from service.cohort_stats import REASONS, Arm, Finding, judge
from service.config_store import VersionConflict
from service.live_config import LiveConfig
from service.rollout import CASCADE_COHORTS, CONTROL, GuardSettings, Policy, RolloutConfig

log = logging.getLogger("payment.cohort_guard")
ACTOR = "guard:cohort"

MOVES = Counter(
    "cohort_guard_moves_total",
    "Cascade cohorts the guard moved back, by what they were worse on",
    ["cohort", "reason"],
)
MOVED_BACK = Gauge(
    "cohort_moved_back",
    "1 while a cohort is moved back (by the guard or a person): its new withdrawals"
    " run another policy",
    ["cohort"],
)
for _cohort in CASCADE_COHORTS:  # every series from the start, so rules see a 0 first
    MOVED_BACK.labels(_cohort)
    for _reason in REASONS:
        MOVES.labels(_cohort, _reason)


class RolloutStore(Protocol):
    """What the guard needs of the live configuration (service/live_config.py)."""

    scope: str

    @property
    def rollout(self) -> RolloutConfig: ...

    async def change_rollout(
        self,
        conn: Conn,
        change: Callable[[RolloutConfig], RolloutConfig],
        *,
        actor: str,
        reason: str,
        expected: int | None = None,
    ) -> int: ...


class NotMovedBack(Exception):
    """Restoring a cohort whose new withdrawals already get its own policy."""


class _AlreadyMovedBack(Exception):
    """Someone moved the cohort back meanwhile: nothing for the guard to do."""


def is_moved_back(config: RolloutConfig, cohort: Policy) -> bool:
    return config.moved_back.get(cohort, cohort) is not cohort


def export_moved_back(config: RolloutConfig) -> None:
    """The `cohort_moved_back` gauge, from the configuration this process has."""
    for cohort in CASCADE_COHORTS:
        MOVED_BACK.labels(cohort).set(int(is_moved_back(config, cohort)))


def follow_moved_back(live: LiveConfig) -> None:
    """Every process: export the gauge now and at each rollout version it applies."""

    def changed(document: str, version: int) -> None:
        if document == "rollout":
            export_moved_back(live.rollout)

    export_moved_back(live.rollout)
    live.on_change.append(changed)


# Per watched cohort, its arms: the cohort's own withdrawals (by `policy`: those
# that actually ran it) and control's, settled (final, or waiting in a manual check:
# a provider that never answers leaves a withdrawal there, not final) and submitted
# since the later of its window's start and the cohort's last restore (the newest
# rollout version that stopped moving it back). `manual`: a task is or was in
# MANUAL_CHECK (every entry writes that audit row).
# Cost, every GUARD_EVERY_S: the rollout's versions through live_config's primary
# key (one row per configuration change), then the window's withdrawals through
# order_queues_created (0012), each with two index probes: its live task
# (order_tasks_one_live) and its manual-check events (order_task_events_manual,
# 0012, only ever those rows, and only in its month's partition and the first one).
# An hour at 10 withdrawals a second: 36,000 rows.
# The scan's lower bound is the longest window back from now(), which the planner
# evaluates when it plans: with a bound it cannot know then (the arms' earliest
# `since`, a subquery), PostgreSQL assumes a third of the table, and on 5 million
# withdrawals planned 71 million cost units for 0.3 ms of work, and spent 1.3 s of a
# core compiling it (JIT) on every run (docs/capacity.md, "Run 10").
_WINDOW = """
WITH arms AS (
    SELECT a.cohort,
           greatest(now() - make_interval(secs => a.window_s), r.restored_at) AS since
    FROM unnest(%(cohorts)s::text[], %(windows)s::float8[]) AS a(cohort, window_s)
    LEFT JOIN LATERAL (
        SELECT max(v.changed_at) AS restored_at FROM (
            SELECT changed_at,
                   coalesce(body->'moved_back'->>a.cohort, a.cohort) <> a.cohort AS moved,
                   lag(coalesce(body->'moved_back'->>a.cohort, a.cohort) <> a.cohort)
                       OVER (ORDER BY version) AS was_moved
            FROM live_config WHERE scope = %(scope)s AND name = 'rollout') v
        WHERE v.was_moved AND NOT v.moved) r ON true
), settled AS (
    SELECT q.policy, q.created_at, q.status = 'COMPLETED' AS succeeded,
           w.waiting OR EXISTS (SELECT 1 FROM order_task_events e
                                WHERE e.queue_id = q.id AND e.to_state = 'MANUAL_CHECK'
                                  AND e.queue_created_at IN (q.created_at, '-infinity'))
               AS manual
    FROM order_queues q
    CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM order_tasks t
                        WHERE t.queue_id = q.id AND t.status = 'MANUAL_CHECK') AS waiting) w
    WHERE q.created_at >= now() - make_interval(secs => %(longest)s)
      AND (q.status <> 'ACTIVE' OR w.waiting)
)
SELECT a.cohort, s.policy, count(*) AS n,
       count(*) FILTER (WHERE s.succeeded) AS succeeded,
       count(*) FILTER (WHERE s.manual) AS manual
FROM arms a JOIN settled s ON s.policy IN (a.cohort, %(control)s) AND s.created_at >= a.since
GROUP BY a.cohort, s.policy
"""


def window_params(scope: str, windows: Mapping[Policy, float]) -> dict[str, object]:
    """_WINDOW's parameters: each cohort's window (seconds) in `scope`."""
    return {
        "cohorts": [str(c) for c in windows],
        "windows": list(windows.values()),
        "longest": max(windows.values(), default=0.0),  # no arm starts earlier
        "scope": scope,
        "control": str(CONTROL),
    }


async def window_arms(
    conn: Conn, scope: str, windows: Mapping[Policy, float]
) -> dict[Policy, tuple[Arm, Arm]]:
    """Each cohort's (cohort, control) arms over its window (`windows`: seconds)."""
    rows = await (await conn.execute(_WINDOW, window_params(scope, windows))).fetchall()
    counts = {(r["cohort"], r["policy"]): Arm(r["n"], r["succeeded"], r["manual"]) for r in rows}
    empty = Arm(0, 0, 0)
    return {c: (counts.get((c, c), empty), counts.get((c, CONTROL), empty)) for c in windows}


@dataclass(frozen=True)
class Move:
    cohort: Policy
    to: Policy
    findings: list[Finding]
    version: int


async def check_cohorts(conn: Conn, store: RolloutStore) -> list[Move]:
    """One pass: every cohort whose guard is on and that is not moved back yet is
    judged, and moved back when worse. The caller holds the lock."""
    config = store.rollout
    rules = {c: config.guard_for(c) for c in CASCADE_COHORTS}
    watched = {
        c: rule.window_s
        for c, rule in rules.items()
        if rule.enabled and rule.fallback is not c and not is_moved_back(config, c)
    }
    if not watched:
        return []
    moves = []
    for cohort, (arm, control) in (await window_arms(conn, store.scope, watched)).items():
        findings = judge(arm, control, rules[cohort])
        if findings and (move := await _move_back(conn, store, cohort, rules[cohort], findings)):
            moves.append(move)
    return moves


async def _move_back(
    conn: Conn, store: RolloutStore, cohort: Policy, rule: GuardSettings, found: list[Finding]
) -> Move | None:
    figures = "; ".join(f.describe() for f in found)
    reason = (
        f"cohort guard: {cohort} significantly worse than {CONTROL} over the last"
        f" {rule.window_s:.0f} s (z > {rule.z}): {figures}; new withdrawals get {rule.fallback}"
    )

    def change(current: RolloutConfig) -> RolloutConfig:
        # Decided again on the version in force: a person may have acted meanwhile.
        if is_moved_back(current, cohort):
            raise _AlreadyMovedBack
        return current.moving_back(cohort, rule.fallback)

    try:
        version = await store.change_rollout(conn, change, actor=ACTOR, reason=reason)
    except (_AlreadyMovedBack, VersionConflict):  # a conflict: judged again next run
        return None
    log.warning("rollout version %d: %s", version, reason)
    return Move(cohort, rule.fallback, found, version)


class CohortGuard:
    """The workers' periodic check: `check_cohorts` at most every `every_s` in this
    process. No lock: the `checks` job runs in one worker at a time, and should two
    guards judge at once, the rollout's versions let one move in (the other's
    change meets the primary key, or finds the cohort moved back: service/config_store.py).
    Each move commits on its own, as a person's change does."""

    def __init__(self, store: RolloutStore, every_s: float) -> None:
        self.store, self.every_s = store, every_s
        self._last: float | None = None

    async def __call__(self, conn: Conn) -> list[Move]:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return []
        self._last = now
        moves = await check_cohorts(conn, self.store)
        for move in moves:  # committed: count them
            MOVES.labels(move.cohort, move.findings[0].what).inc()
        return moves


async def restore(
    conn: Conn,
    store: RolloutStore,
    cohort: Policy,
    actor: str,
    reason: str,
    expected: int | None = None,
) -> int:
    """A person gives the cohort its own policy back (new withdrawals only); the new
    version. NotMovedBack when it is not moved back; `expected`: as change_rollout's."""

    def change(current: RolloutConfig) -> RolloutConfig:
        if not is_moved_back(current, cohort):
            raise NotMovedBack(f"{cohort} is not moved back")
        return current.restoring(cohort)

    return await store.change_rollout(conn, change, actor=actor, reason=reason, expected=expected)
