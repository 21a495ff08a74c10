"""The registry of workflow definitions, and how two versions of the machine differ."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.workflow_v2 import V2
from workflows.core import IllegalTransition
from workflows.registry import DEFINITIONS, Definitions, UnknownDefinition
from workflows.withdrawal import TRANSITIONS
from workflows.withdrawal_definition import WITHDRAWAL, WithdrawalDefinition
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


def test_this_build_has_version_1_of_the_withdrawal_and_starts_new_ones_on_it() -> None:
    assert DEFINITIONS.current("withdrawal") is WITHDRAWAL
    assert WITHDRAWAL.version == 1
    assert DEFINITIONS.versions() == {("withdrawal", 1)}


def test_new_workflows_start_on_the_highest_version_unless_told_otherwise() -> None:
    assert Definitions(WITHDRAWAL, V2).current("withdrawal") is V2
    pinned = Definitions(WITHDRAWAL, V2, current={"withdrawal": 1})
    assert pinned.current("withdrawal") is WITHDRAWAL
    assert pinned.get("withdrawal", 2) is V2


def test_an_unknown_version_or_a_duplicate_is_refused() -> None:
    with pytest.raises(UnknownDefinition, match="withdrawal v3"):
        DEFINITIONS.get("withdrawal", 3)
    with pytest.raises(ValueError, match="share a name and version"):
        Definitions(WITHDRAWAL, WithdrawalDefinition(version=1))
    with pytest.raises(UnknownDefinition):
        Definitions(WITHDRAWAL, current={"withdrawal": 2})


def test_the_second_version_differs_from_the_first_in_exactly_one_transition() -> None:
    v1, v2 = TRANSITIONS, V2.transitions
    assert v1.keys() == v2.keys()
    assert [pair for pair in v1 if v1[pair] is not v2[pair]] == [
        (TaskStatus.CREATING, OrderDeclined)
    ]
    declined = OrderDeclined(reason="declined")
    skipped, _ = WITHDRAWAL.decide(CREATING, declined, NOW)
    rechecked, _ = V2.decide(CREATING, declined, NOW)
    assert (skipped.status, skipped.target) == (TaskStatus.NEGATIVE_EVAL, TaskStatus.SKIPPED)
    assert (rechecked.status, rechecked.target) == (TaskStatus.NEGATIVE_EVAL, None)


def test_a_version_keeps_illegal_pairs_illegal() -> None:
    with pytest.raises(IllegalTransition):
        V2.decide(CREATING, Start(), NOW)
