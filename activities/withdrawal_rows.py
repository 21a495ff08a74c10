"""A withdrawal's rows as its side effects and its shell read them (schema.sql).

The engine types the columns it relies on (engine/rows.py); these add the
withdrawal's own, so a side effect reads `task["provider"]` from a typed row.
"""

from __future__ import annotations

from datetime import datetime
from typing import NotRequired, cast

from engine.rows import QueueRow, TaskRow


class WithdrawalQueueRow(QueueRow):
    """One withdrawal (order_queues)."""

    order_id: str
    merchant_id: str
    amount_minor: int
    currency: str
    policy: str  # the rollout gate's decision: cascade, single_shot, health_cascade
    created_at: datetime
    finished_at: datetime | None


class WithdrawalTaskRow(TaskRow):
    """One provider attempt (order_tasks)."""

    provider: str
    provider_ref: str | None
    order_submitted: bool
    target: str | None
    # the providers settings version it started with (service/live_config.py);
    # absent or None on rows from before live configuration: the ones in force
    providers_version: NotRequired[int | None]


def withdrawal_of(queue: QueueRow) -> WithdrawalQueueRow:
    """The engine's queue row is a withdrawal's (the definition's Storage names its table)."""
    return cast(WithdrawalQueueRow, queue)


def attempt_of(task: TaskRow) -> WithdrawalTaskRow:
    return cast(WithdrawalTaskRow, task)
