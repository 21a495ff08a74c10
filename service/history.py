"""The audit trail's partitions: made ahead, and judged for retention (issue 23;
docs/ops.md, "Retention and the archive").

`order_task_events` is partitioned by month of each row's withdrawal's submission
(migration 0015), so a month's partition holds the whole history of the withdrawals
submitted in it, and of no other. The workers' hourly `history` job makes the months
ahead (`add_months`), then archives the months past retention (service/archive.py).
A month leaves only whole: once every withdrawal submitted in it may leave, which
`blockers` says, with why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

# Creating a partition takes ACCESS EXCLUSIVE on the parent and reads the default
# partition (empty unless a month lacked its partition): a moment, but every writer of
# the audit trail queues behind a waiting lock, so it waits no longer than this and the
# next run tries again (the months are made `ahead` months early).
LOCK_TIMEOUT = "2s"
_ADD_MONTHS = "SELECT name FROM order_task_events_add_months(%s) AS name"
_PARTITIONS = """
SELECT name, is_default, lower, upper, bytes FROM v_event_partitions
ORDER BY is_default, upper
"""


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime | None  # None: from the start of time (the first partition)
    upper: datetime | None  # None: the default partition
    bytes: int

    @property
    def is_default(self) -> bool:
        return self.upper is None


def add_months(conn: psycopg.Connection[Any], ahead: int) -> list[str]:
    """Make the month partitions missing up to `ahead` months after this one; their
    names. LockNotAvailable when the parent was busy for LOCK_TIMEOUT."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        return [str(row[0]) for row in conn.execute(_ADD_MONTHS, (ahead,)).fetchall()]


def partitions(conn: psycopg.Connection[Any]) -> list[Partition]:
    """Every partition attached now, oldest first, the default last."""
    rows = conn.execute(_PARTITIONS).fetchall()
    return [
        Partition(name, lower, None if default else upper, size)
        for name, default, lower, upper, size in rows
    ]


@dataclass(frozen=True)
class Blocker:
    reason: str
    withdrawals: int
    examples: list[str]  # a few order ids


# Why withdrawals submitted in [lower, upper) may not leave yet: each reason, how many,
# and a few order ids. Each branch starts from a small set held by a partial index
# (live withdrawals, untold outcomes, tasks with a person, pending proposals, open dead
# letters, open findings), never from the month's withdrawals, so it costs the same for a month of a
# billion rows. A final withdrawal stays final, and a manual check or a proposal needs
# a live one; a dead letter or a finding can still come to a final one: `archive.py`
# asks again under locks that stop both.
_BLOCKERS = """
WITH blocked (reason, order_id) AS (
    SELECT 'not final', q.order_id FROM order_queues q
    WHERE q.status = 'ACTIVE' AND q.created_at >= %(lower)s AND q.created_at < %(upper)s
  UNION ALL
    -- cascade-core has not heard the outcome yet: the notification is still retried
    -- (and its core_notified_at is the one change a final queue row may still see)
    SELECT 'outcome not yet told to cascade-core', q.order_id FROM order_queues q
    WHERE q.core_notified_at IS NULL AND q.status <> 'ACTIVE'
      AND q.created_at >= %(lower)s AND q.created_at < %(upper)s
  UNION ALL
    SELECT 'manual check open', q.order_id
    FROM order_tasks t JOIN order_queues q ON q.id = t.queue_id
    WHERE t.status = 'MANUAL_CHECK' AND q.created_at >= %(lower)s AND q.created_at < %(upper)s
  UNION ALL
    SELECT 'four-eyes proposal pending', q.order_id
    FROM manual_check_proposals p JOIN order_queues q ON q.id = p.queue_id
    WHERE p.status = 'pending' AND q.created_at >= %(lower)s AND q.created_at < %(upper)s
  UNION ALL
    SELECT 'dead letter not replayed', q.order_id
    FROM dead_letters d JOIN order_queues q ON q.id = d.queue_id
    WHERE d.replayed_at IS NULL AND q.created_at >= %(lower)s AND q.created_at < %(upper)s
  UNION ALL
    SELECT 'reconciliation drift open', q.order_id
    FROM ledger_findings f JOIN order_queues q ON q.id = f.queue_id
    WHERE f.resolved_at IS NULL AND q.created_at >= %(lower)s AND q.created_at < %(upper)s
)
SELECT reason, count(DISTINCT order_id) AS withdrawals,
       (array_agg(DISTINCT order_id))[1:5] AS examples
FROM blocked GROUP BY reason ORDER BY reason
"""


def blockers(conn: psycopg.Connection[Any], partition: Partition) -> list[Blocker]:
    """What keeps the partition's withdrawals in the hot tables (none: it may leave)."""
    bounds = {"lower": partition.lower or "-infinity", "upper": partition.upper}
    rows = conn.execute(_BLOCKERS, bounds).fetchall()
    return [Blocker(reason, int(n), list(examples)) for reason, n, examples in rows]
