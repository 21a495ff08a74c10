"""What a withdrawal's end, and each of its manual checks, adds to the cohort
metrics and to the settle objective (docs/ops.md, Service-level objectives).

A withdrawal *settles* when it is final or when one of its tasks is sent to a
person (MANUAL_CHECK): from then on nothing automatic is left to do, and what
follows is a person's time, not the service's. The objective wants it settled
within SETTLE_SLO_S of its submission. Each withdrawal is judged once: on_time
or late when it settles, overdue when the workers' periodic checks find it still
unsettled past its deadline, so that a withdrawal that never settles is a bad
event, not a silence. A row of `settle_slo_results` (0011) is the judgement;
its primary key makes it once, whichever of the two comes first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from activities.provider_config import ProviderConfig
from engine import commit_hooks
from engine.journal import Conn
from engine.rows import QueueRow, TaskRow
from service import withdrawal_metrics as metrics
from service.settings import Settings
from workflows.core import Event
from workflows.withdrawal_events import TaskStatus

# Beyond the longest webhook SLA: one status check, a ledger call and a retry or two.
SETTLE_MARGIN_S = 300.0

# Judged when settled, unless already judged (the periodic check came first, or
# an earlier manual check settled it); `judged` is NULL then, and nothing counts.
_SETTLE = """
WITH q AS (
    SELECT id, policy, created_at, extract(epoch FROM now() - created_at)::float8 AS age_s
    FROM order_queues WHERE id = %(id)s
), judged AS (
    INSERT INTO settle_slo_results (queue_id, policy, result)
    SELECT id, policy, CASE WHEN age_s <= %(target_s)s THEN 'on_time' ELSE 'late' END FROM q
    ON CONFLICT (queue_id) DO NOTHING
    RETURNING result
)
SELECT q.policy, q.age_s, (SELECT result FROM judged) AS judged,
       (SELECT count(DISTINCT e.task_id) FROM order_task_events e
        WHERE e.queue_id = q.id AND e.event_type = 'start'
          AND e.queue_created_at IN (q.created_at, '-infinity')) AS attempts
FROM q
"""
# Bounded, oldest first. A withdrawal settling meanwhile conflicts on the key:
# whichever commits first judges it, the other inserts nothing.
_OVERDUE = """
INSERT INTO settle_slo_results (queue_id, policy, result)
SELECT q.id, q.policy, 'overdue' FROM order_queues q
WHERE q.status = 'ACTIVE' AND q.created_at < now() - make_interval(secs => %s)
  AND NOT EXISTS (SELECT 1 FROM settle_slo_results r WHERE r.queue_id = q.id)
ORDER BY q.created_at LIMIT 500
ON CONFLICT (queue_id) DO NOTHING
RETURNING policy
"""


def settle_target_s(settings: Settings, providers: Mapping[str, ProviderConfig]) -> float:
    """SETTLE_SLO_S, or the providers' longest webhook SLA plus a margin."""
    if settings.settle_slo_s is not None:
        return settings.settle_slo_s
    slas = [p.timing.webhook_sla_s for p in providers.values()]
    return max(slas, default=900.0) + SETTLE_MARGIN_S


class SettleRecorder:
    """The engine's FinishListener (`on_finish`) and a TransitionListener
    (`on_transition`); every count waits for the transaction's commit."""

    def __init__(self, target_s: Callable[[], float]) -> None:
        # A callable: the deadline follows the live providers' webhook SLAs.
        self.target_s = target_s

    async def on_finish(self, conn: Conn, queue: QueueRow, status: str) -> None:
        row = await self.judge(conn, str(queue["id"]))
        policy, age_s, attempts = row["policy"], float(row["age_s"]), int(row["attempts"])

        def count() -> None:
            metrics.WITHDRAWAL_OUTCOMES.labels(policy, status).inc()
            metrics.TIME_TO_FINAL.labels(policy, status).observe(age_s)
            metrics.ATTEMPTS.labels(policy).observe(attempts)

        commit_hooks.on_commit(count)

    async def on_transition(
        self,
        conn: Conn,
        queue: QueueRow,
        task: TaskRow,
        event: Event,
        from_status: str,
        to_status: str,
    ) -> None:
        if to_status != TaskStatus.MANUAL_CHECK or from_status == to_status:
            return  # a task entering manual check, not an event it stays there with
        policy = (await self.judge(conn, str(queue["id"])))["policy"]
        commit_hooks.on_commit(lambda: metrics.MANUAL_CHECKS_ENTERED.labels(policy).inc())

    async def judge(self, conn: Conn, queue_id: str) -> dict[str, Any]:
        """Judges a settling withdrawal against the objective unless it was already
        (`judged`: on_time, late, or None); with its policy, age and attempts."""
        params = {"id": queue_id, "target_s": self.target_s()}
        found = await (await conn.execute(_SETTLE, params)).fetchone()
        assert found is not None, "the queue row is this transaction's"
        row = {**found, "policy": metrics.policy_label(found["policy"])}
        policy, result = row["policy"], row["judged"]
        if result is not None:
            commit_hooks.on_commit(lambda: metrics.SETTLE_SLO.labels(policy, result).inc())
        return row


async def count_overdue(conn: Conn, target_s: float) -> int:
    """The workers' periodic checks: withdrawals past their deadline and still
    unsettled count as overdue, once each; returns how many this run."""
    with commit_hooks.transaction_scope():
        async with conn.transaction():
            rows = await (await conn.execute(_OVERDUE, (target_s,))).fetchall()
            policies = [metrics.policy_label(row["policy"]) for row in rows]

            def count() -> None:
                for policy in policies:
                    metrics.SETTLE_SLO.labels(policy, "overdue").inc()

            commit_hooks.on_commit(count)
    return len(rows)


async def roll_up(conn: Conn) -> None:
    """The workers' periodic checks: the judgements of closed minutes counted once, into
    settle_slo_minutes (0018), so that the month's summary reads minutes, not rows."""
    async with conn.transaction():
        await conn.execute("SELECT settle_slo_roll_up()")
