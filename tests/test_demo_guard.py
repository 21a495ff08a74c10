"""The demo's account of the cohort guard (sandbox/demo_guard.py): read back from
live_config and order_queues as a run leaves them, on a real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from engine.migrations import migrate
from sandbox.demo_guard import GuardMove, guard_moves, summary, verdict
from tests.conftest import fresh_database

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GUARD = {"window_s": 60.0, "min_sample": 30, "z": 3.09, "manual_margin": 0.05}


@pytest.fixture
def url() -> Iterator[str]:
    """Its own database per test: the audit table refuses DELETE and TRUNCATE."""
    with fresh_database("_demo_guard") as url:
        migrate(url)
        yield url


def version(
    conn: psycopg.Connection[Any], n: int, moved: dict[str, str], by: str, at_s: float
) -> None:
    body = {"merchants": {}, "moved_back": moved, "guard": GUARD}
    conn.execute(
        "INSERT INTO live_config (scope, name, version, body, changed_by, reason, changed_at)"
        " VALUES ('default', 'rollout', %s, %s, %s, %s, %s)",
        (n, json.dumps(body), by, f"why {n}", T0 + timedelta(seconds=at_s)),
    )


def withdrawal(
    conn: psycopg.Connection[Any], cohort: str, policy: str, at_s: float, manual: bool = False
) -> None:
    queue_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor,"
        " currency, status, policy, cohort, created_at) VALUES (%s, %s, 'h', 'm', 100, 'EUR',"
        " 'ACTIVE', %s, %s, %s)",
        (queue_id, f"o-{queue_id}", policy, cohort, T0 + timedelta(seconds=at_s)),
    )
    conn.execute(
        "INSERT INTO order_tasks (id, queue_id, position, provider, status, funds)"
        " VALUES (%s, %s, 0, 'payfast', %s, 'FROZEN')",
        (uuid.uuid4(), queue_id, "MANUAL_CHECK" if manual else "EXECUTING"),
    )


def test_an_unguarded_run_says_so(url: str) -> None:
    assert guard_moves(url) == ({}, [])
    assert summary(url, 90).endswith("guard: no cohort moved back")


def test_each_move_with_its_time_reason_and_the_withdrawals_through_the_cohort(url: str) -> None:
    with psycopg.connect(url) as conn:
        version(conn, 1, {}, "seed", 0)
        version(conn, 2, {"cascade": "single_shot"}, "guard:cohort", 38.5)
        version(conn, 3, {"cascade": "single_shot"}, "ana", 50)  # another change: no move
        # a person moves health_cascade back: not the guard's
        version(conn, 4, {"cascade": "single_shot", "health_cascade": "single_shot"}, "ana", 60)
        withdrawal(conn, "single_shot", "single_shot", 0)  # the first submission
        for at in (1, 2, 3):
            withdrawal(conn, "cascade", "cascade", at, manual=at == 2)
        withdrawal(conn, "cascade", "cascade", 39)  # while the change was applying
        withdrawal(conn, "cascade", "single_shot", 40)  # moved back: not through it
        withdrawal(conn, "health_cascade", "health_cascade", 5)
    settings, moves = guard_moves(url)
    assert settings == GUARD
    assert moves == [GuardMove("cascade", "single_shot", 2, 38.5, "why 2", 3, 1, 1)]
    text = summary(url, 90)
    assert (
        "cascade moved back to single_shot 38.5 s after the first submission (58 min real)" in text
    )
    assert "3 withdrawals went through cascade before the move, 1 of them" in text
    assert "(window_s 60.0, min_sample 30, z 3.09, manual_margin 0.05)" in text
    assert text.endswith(
        "guard: moved cascade back after 38 s (3 withdrawals through it);"
        " health_cascade not moved back"
    )


def test_the_verdict_names_every_cohort_moved_back() -> None:
    moves = [
        GuardMove("cascade", "single_shot", 2, 23.2, "r", 34, 10, 0),
        GuardMove("health_cascade", "single_shot", 3, 25.4, "r", 31, 9, 0),
    ]
    assert verdict(moves) == (
        "guard: moved cascade back after 23 s (34 withdrawals through it),"
        " health_cascade after 25 s (31)"
    )
