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
    WITHDRAWAL_V4,
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


def test_this_build_keeps_versions_1_to_3_and_starts_new_withdrawals_on_version_4() -> None:
    assert DEFINITIONS.current("withdrawal") is WITHDRAWAL_V4
    every = (WITHDRAWAL, WITHDRAWAL_V2, WITHDRAWAL_V3, WITHDRAWAL_V4)
    assert tuple(d.version for d in every) == (1, 2, 3, 4)
    assert DEFINITIONS.versions() == {("withdrawal", v) for v in (1, 2, 3, 4)}
    assert [d.routed for d in every] == [False, True, True, True]
    assert [d.asks_the_ledger for d in every] == [False, False, True, True]
    assert [d.defers for d in every] == [False, False, False, True]


def test_new_workflows_start_on_the_highest_version_unless_told_otherwise() -> None:
    assert Definitions(WITHDRAWAL, NEXT).current("withdrawal") is NEXT
    pinned = Definitions(WITHDRAWAL, NEXT, current={"withdrawal": 1})
    assert pinned.current("withdrawal") is WITHDRAWAL
    assert pinned.get("withdrawal", NEXT.version) is NEXT


def test_an_unknown_version_or_a_duplicate_is_refused() -> None:
    with pytest.raises(UnknownDefinition, match="withdrawal v7"):
        DEFINITIONS.get("withdrawal", 7)
    with pytest.raises(ValueError, match="share a name and version"):
        Definitions(WITHDRAWAL, WithdrawalDefinition(version=1))
    with pytest.raises(UnknownDefinition):
        Definitions(WITHDRAWAL, current={"withdrawal": 7})


def test_the_next_version_differs_from_the_current_in_exactly_one_transition() -> None:
    v1, v2 = WITHDRAWAL_V4.transitions, NEXT.transitions
    assert v1.keys() == v2.keys()
    assert [pair for pair in v1 if v1[pair] is not v2[pair]] == [
        (TaskStatus.CREATING, OrderDeclined)
    ]
    declined = OrderDeclined(reason="declined")
    skipped, _ = WITHDRAWAL_V4.decide(CREATING, declined, NOW)
    rechecked, _ = NEXT.decide(CREATING, declined, NOW)
    assert (skipped.status, skipped.target) == (TaskStatus.NEGATIVE_EVAL, TaskStatus.SKIPPED)
    assert (rechecked.status, rechecked.target) == (TaskStatus.NEGATIVE_EVAL, None)


def test_a_version_keeps_illegal_pairs_illegal() -> None:
    with pytest.raises(IllegalTransition):
        NEXT.decide(CREATING, Start(), NOW)
