"""One constant per set of task statuses (workflows/withdrawal_events.py), and the SQL
that must agree with it: the partial indexes and stuck_tasks() in the schema, and
the queries built from the constants. Add a status and forget a copy: this fails."""

from __future__ import annotations

import re

import psycopg
import pytest

from engine import sweep
from service import health, routing
from workflows.core import sql_literals
from workflows.registry import DEFINITIONS
from workflows.withdrawal_events import AT_PROVIDER, LIVE, TERMINAL, TaskStatus

S = TaskStatus


def test_the_sets() -> None:
    assert {S.CREATING, S.EXECUTING, S.NEGATIVE_EVAL, S.RECHECKING, S.MANUAL_CHECK} == LIVE
    assert LIVE - {S.MANUAL_CHECK} == AT_PROVIDER
    assert LIVE | TERMINAL | {S.PENDING} == set(TaskStatus) and not LIVE & TERMINAL
    assert DEFINITIONS.live_statuses() == LIVE


def statuses_in(sql: str) -> set[str]:
    return set(re.findall(r"'([A-Z_]+)'", sql))


def index_predicate(url: str, name: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
            (name,),
        ).fetchone()
    assert row is not None, name
    return str(row[0])


@pytest.mark.parametrize(
    ("index", "expected"),
    [("order_tasks_one_live", LIVE), ("order_tasks_in_flight", AT_PROVIDER)],
)
def test_the_partial_indexes_cover_the_constants(
    migrated_url: str, index: str, expected: frozenset[str]
) -> None:
    assert statuses_in(index_predicate(migrated_url, index)) == expected


def test_the_open_tasks_index_excludes_exactly_the_rest(migrated_url: str) -> None:
    predicate = index_predicate(migrated_url, "order_tasks_open")
    assert "<> ALL" in predicate
    assert statuses_in(predicate) == set(TaskStatus) - LIVE


def test_stuck_tasks_looks_at_tasks_at_a_provider(migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        row = conn.execute("SELECT pg_get_functiondef('stuck_tasks'::regproc)").fetchone()
    assert row is not None
    where = str(row[0]).rsplit("WHERE t.status IN", 1)[1].split(")", 1)[0]
    assert statuses_in(where) == AT_PROVIDER


def test_the_queries_are_built_from_the_constants() -> None:
    assert sql_literals(AT_PROVIDER) in routing._IN_FLIGHT
    assert sql_literals(AT_PROVIDER) in health._REPORT
    built = sweep._waiting_query(DEFINITIONS.storage(), DEFINITIONS.live_statuses())
    assert sql_literals(LIVE) in built
    assert "FROM order_tasks t JOIN order_queues q" in built  # the storage's names


def test_the_sweep_index_is_exactly_the_sweeps_predicate(migrated_url: str) -> None:
    """The planner can use a partial index only when the query's WHERE implies its
    predicate: with sequential scans priced out, a mismatch still shows a Seq Scan."""
    built = sweep._waiting_query(DEFINITIONS.storage(), DEFINITIONS.live_statuses())
    with psycopg.connect(migrated_url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            str(r[0]) for r in conn.execute("EXPLAIN " + built, (15.0, 100)).fetchall()
        )
    # An index scan names the table on its own line; a bitmap scan names the index
    # beneath a Bitmap Heap Scan of the table. Either way, no sequential scan.
    assert re.search(
        r"(Index Scan using order_tasks_swept on order_tasks t|"
        r"Bitmap Index Scan on order_tasks_swept)",
        plan,
    ), plan
    assert "Seq Scan on order_tasks" not in plan, plan


@pytest.mark.parametrize(
    ("index", "expected", "negated"),
    [
        ("order_tasks_unfinished", TERMINAL, True),
        ("order_tasks_finished", TERMINAL - {S.CANCELLED}, False),
    ],
)
def test_the_runbooks_indexes_cover_the_constants(
    migrated_url: str, index: str, expected: frozenset[str], negated: bool
) -> None:
    predicate = index_predicate(migrated_url, index)
    assert ("<> ALL" in predicate) is negated
    assert statuses_in(predicate) == expected
