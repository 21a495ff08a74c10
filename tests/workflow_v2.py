"""A second version of the withdrawal machine, as a team would ship one: it
differs from version 1 in one transition (the tests load it through
WORKFLOW_DEFINITIONS).

Version 2 no longer trusts a decline at once: the task checks the order's status
first, as after an ambiguous answer, and the cascade moves on only when the
provider confirms there is no order (FAILED, hold released) instead of at once
(SKIPPED, hold released).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from workflows.core import Event, FollowUp
from workflows.registry import Definitions
from workflows.withdrawal import TRANSITIONS
from workflows.withdrawal_definition import WITHDRAWAL, WithdrawalDefinition
from workflows.withdrawal_events import BeginRecheck, OrderDeclined, TaskState, TaskStatus
from workflows.withdrawal_handlers import Decision


def recheck_a_decline(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, OrderDeclined)
    new = replace(state, status=TaskStatus.NEGATIVE_EVAL, target=None, last_reason=event.reason)
    return new, [FollowUp(BeginRecheck())]


V2 = WithdrawalDefinition(
    version=2, transitions={**TRANSITIONS, (TaskStatus.CREATING, OrderDeclined): recheck_a_decline}
)
DEFINITIONS = Definitions(WITHDRAWAL, V2)  # new withdrawals start on 2, the highest
V1_RETIRED = Definitions(V2)
