"""The next version of the withdrawal machine, as a team would ship one: it
differs from this build's current version in one transition (the tests load it
through WORKFLOW_DEFINITIONS).

It no longer trusts a decline at once: the task checks the order's status first,
as after an ambiguous answer, and the cascade moves on only when the provider
confirms there is no order (FAILED, hold released) instead of at once (SKIPPED,
hold released).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from workflows.core import Event, FollowUp
from workflows.registry import DEFINITIONS as THIS_BUILD
from workflows.registry import Definitions
from workflows.withdrawal_definition import (
    WITHDRAWAL,
    WITHDRAWAL_V2,
    WITHDRAWAL_V3,
    WITHDRAWAL_V4,
    WithdrawalDefinition,
)
from workflows.withdrawal_events import BeginRecheck, OrderDeclined, TaskState, TaskStatus
from workflows.withdrawal_handlers import Decision


def recheck_a_decline(state: TaskState, event: Event, _now: datetime) -> Decision:
    assert isinstance(event, OrderDeclined)
    new = replace(state, status=TaskStatus.NEGATIVE_EVAL, target=None, last_reason=event.reason)
    return new, [FollowUp(BeginRecheck())]


CURRENT = THIS_BUILD.current("withdrawal")
assert CURRENT is WITHDRAWAL_V4
NEXT = WithdrawalDefinition(
    version=CURRENT.version + 1,
    transitions={
        **WITHDRAWAL_V4.transitions,
        (TaskStatus.CREATING, OrderDeclined): recheck_a_decline,
    },
    routed=True,
    asks_the_ledger=True,
    defers=True,
)
# New ones start on NEXT.
DEFINITIONS = Definitions(WITHDRAWAL, WITHDRAWAL_V2, WITHDRAWAL_V3, WITHDRAWAL_V4, NEXT)
CURRENT_RETIRED = Definitions(NEXT)
