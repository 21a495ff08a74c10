"""A provider can only speak for its own orders (the guard in front of the table).

Pure: `decide` alone. The same rules against the real stack are in test_edge.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from workflows.core import Alert, Event, FollowUp, RunActivity, StartTimer
from workflows.withdrawal import TRANSITIONS, decide
from workflows.withdrawal_events import (
    Funds,
    ProviderFailed,
    ProviderNotFound,
    ProviderPending,
    ProviderSucceeded,
    StatusUnknown,
    TaskState,
    Timer,
    Timing,
)
from workflows.withdrawal_events import TaskStatus as S

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
REF = "ord-alpha-1"
EXECUTING = TaskState(
    S.EXECUTING,
    funds=Funds.FROZEN,
    provider_ref=REF,
    order_submitted=True,
    webhook_deadline=NOW + timedelta(minutes=15),
    provider="alpha",
)
POLLING = replace(EXECUTING, timing=Timing(poll_interval=timedelta(seconds=30)), next_check_at=None)
CREATING = TaskState(S.CREATING, funds=Funds.FROZEN, order_submitted=True, provider="alpha")
RECHECKING = TaskState(
    S.RECHECKING, funds=Funds.FROZEN, order_submitted=True, recheck_attempts=1, provider="alpha"
)
SUCCEEDED = replace(EXECUTING, status=S.SUCCEEDED, funds=Funds.COMMITTED)
FAILED = replace(EXECUTING, status=S.FAILED, funds=Funds.RELEASED)

FROM_BETA: list[Event] = [
    ProviderSucceeded(None, speaker="beta"),
    ProviderSucceeded(REF, speaker="beta"),
    ProviderFailed("declined", speaker="beta"),
    ProviderPending(None, speaker="beta"),
    ProviderNotFound(speaker="beta"),
    StatusUnknown("x", speaker="beta"),
]


# Every pair the table knows (a pair it does not know stays illegal, guard or not).
FROM_BETA_CASES = [
    pytest.param(state, event, id=f"{state.status}-{event.name}")
    for state in (CREATING, EXECUTING, RECHECKING, SUCCEEDED, FAILED)
    for event in FROM_BETA
    if (state.status, type(event)) in TRANSITIONS
]


@pytest.mark.parametrize(("state", "event"), FROM_BETA_CASES)
def test_another_providers_word_changes_nothing_and_alerts(state: TaskState, event: Event) -> None:
    new, commands = decide(state, event, NOW)
    assert new == state
    assert commands == [Alert("wrong_provider", "beta reported on an order of alpha")]


@pytest.mark.parametrize(
    "event",
    [
        ProviderSucceeded("ord-other", speaker="alpha"),
        ProviderFailed("declined", "ord-other", speaker="alpha"),
        ProviderPending("ord-other", speaker="alpha"),
    ],
    ids=lambda e: e.name,
)
@pytest.mark.parametrize("state", [EXECUTING, SUCCEEDED, FAILED])
def test_another_order_of_the_right_provider_is_a_conflict(state: TaskState, event: Event) -> None:
    new, commands = decide(state, event, NOW)
    assert new == state
    detail = f"provider order ord-other is not this task's order {REF}"
    assert commands == [Alert("provider_conflict", detail)]


def test_the_tasks_own_provider_and_order_still_settle() -> None:
    new, commands = decide(EXECUTING, ProviderSucceeded(REF, speaker="alpha"), NOW)
    assert new.target == S.SUCCEEDED and commands == [RunActivity("commit")]
    # an answer without an order id cannot contradict the recorded one
    new, commands = decide(EXECUTING, ProviderFailed("declined", speaker="alpha"), NOW)
    assert new.target == S.FAILED and commands == [RunActivity("release")]


def test_before_an_order_id_is_known_the_first_one_is_recorded() -> None:
    early = ProviderSucceeded("ord-new", speaker="alpha")
    new, commands = decide(CREATING, early, NOW)
    assert new.provider_ref == "ord-new" and FollowUp(early) in commands
    settled, _ = decide(new, early, NOW)  # the follow-up now agrees with the record
    assert settled.target == S.SUCCEEDED


def test_our_own_status_call_answered_about_another_order_counts_as_no_answer() -> None:
    answer = ProviderPending("ord-other", speaker="alpha", solicited=True)
    new, commands = decide(POLLING, answer, NOW)
    alert, follow_up = commands
    assert isinstance(alert, Alert) and alert.kind == "provider_conflict"
    assert follow_up == FollowUp(StatusUnknown("provider_conflict"))
    # the follow-up keeps polling: the task is as before, only its next poll is set
    polled, timers = decide(new, follow_up.event, NOW)
    assert replace(polled, next_check_at=None) == POLLING
    assert timers == [StartTimer(Timer.STATUS_POLL, NOW + timedelta(seconds=30))]


def test_a_solicited_answer_after_the_task_ended_only_alerts() -> None:
    answer = ProviderSucceeded("ord-other", speaker="alpha", solicited=True)
    new, commands = decide(FAILED, answer, NOW)
    assert new == FAILED and [type(c) for c in commands] == [Alert]


def test_observations_without_a_speaker_are_ours_and_pass() -> None:
    new, commands = decide(EXECUTING, ProviderSucceeded(REF), NOW)
    assert new.target == S.SUCCEEDED and commands == [RunActivity("commit")]
