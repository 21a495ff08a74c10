"""The registry of workflow definitions, and how two versions of the machine differ."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.workflow_next import NEXT
from workflows.core import IllegalTransition
from workflows.registry import DEFINITIONS, Definitions, UnknownDefinition
from workflows.withdrawal_definition import (
    WITHDRAWAL,
    WITHDRAWAL_V2,
    WITHDRAWAL_V3,
    WithdrawalDefinition,
)
from workflows.withdrawal_events import (
    Funds,
    OrderDeclined,
    Start,
    TaskState,
    TaskStatus,
    Timing,
)

NOW = datetime(2026, 11, 26, tzinfo=UTC)
CREATING = TaskState(status=TaskStatus.CREATING, funds=Funds.FROZEN, timing=Timing())


def test_this_build_keeps_versions_1_and_2_and_starts_new_withdrawals_on_version_3() -> None:
    assert DEFINITIONS.current("withdrawal") is WITHDRAWAL_V3
    assert (WITHDRAWAL.version, WITHDRAWAL_V2.version, WITHDRAWAL_V3.version) == (1, 2, 3)
    assert DEFINITIONS.versions() == {("withdrawal", 1), ("withdrawal", 2), ("withdrawal", 3)}
    assert WITHDRAWAL_V2.routed and not WITHDRAWAL.routed and WITHDRAWAL_V3.routed
    assert WITHDRAWAL_V3.asks_the_ledger and not WITHDRAWAL_V2.asks_the_ledger


def test_new_workflows_start_on_the_highest_version_unless_told_otherwise() -> None:
    assert Definitions(WITHDRAWAL, NEXT).current("withdrawal") is NEXT
    pinned = Definitions(WITHDRAWAL, NEXT, current={"withdrawal": 1})
    assert pinned.current("withdrawal") is WITHDRAWAL
    assert pinned.get("withdrawal", 4) is NEXT


def test_an_unknown_version_or_a_duplicate_is_refused() -> None:
    with pytest.raises(UnknownDefinition, match="withdrawal v7"):
        DEFINITIONS.get("withdrawal", 7)
    with pytest.raises(ValueError, match="share a name and version"):
        Definitions(WITHDRAWAL, WithdrawalDefinition(version=1))
    with pytest.raises(UnknownDefinition):
        Definitions(WITHDRAWAL, current={"withdrawal": 7})


def test_the_next_version_differs_from_the_current_in_exactly_one_transition() -> None:
    v1, v2 = WITHDRAWAL_V3.transitions, NEXT.transitions
    assert v1.keys() == v2.keys()
    assert [pair for pair in v1 if v1[pair] is not v2[pair]] == [
        (TaskStatus.CREATING, OrderDeclined)
    ]
    declined = OrderDeclined(reason="declined")
    skipped, _ = WITHDRAWAL_V3.decide(CREATING, declined, NOW)
    rechecked, _ = NEXT.decide(CREATING, declined, NOW)
    assert (skipped.status, skipped.target) == (TaskStatus.NEGATIVE_EVAL, TaskStatus.SKIPPED)
    assert (rechecked.status, rechecked.target) == (TaskStatus.NEGATIVE_EVAL, None)


def test_a_version_keeps_illegal_pairs_illegal() -> None:
    with pytest.raises(IllegalTransition):
        NEXT.decide(CREATING, Start(), NOW)
