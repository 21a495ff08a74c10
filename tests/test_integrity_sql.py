"""The SQL that tells an operator or the soak that our books are wrong: v_ledger_drift
(migration 0017), every kind of disagreement between our tasks and the ledger's holds
as reconciliation last fetched them, found by the runbook's lookup by order id through
an index on each side; and the soak's check that every audit row names rows that exist
(the audit trail has no foreign keys since 0017)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from sandbox.soak_checks import audit_references
from tests.history_data import migrated_database, withdrawal

HOLD = "INSERT INTO ledger_holds (key, status, order_id) VALUES (%s, %s, %s)"


@pytest.fixture
def url() -> Iterator[str]:
    with migrated_database("_drift") as url:
        yield url


def drift(url: str, where: str = "true", *args: Any) -> set[tuple[Any, ...]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(f"SELECT * FROM v_ledger_drift WHERE {where}", args).fetchall()
    return {(r["key"], r["order_id"], r["kind"], r["ledger_status"]) for r in rows}


def tasks(url: str, queue: dict[str, Any]) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id::text FROM order_tasks WHERE queue_id = %s ORDER BY position",
            (queue["id"],),
        ).fetchall()
    return [r[0] for r in rows]


async def test_each_kind_of_drift_and_the_lookup_by_order_id(url: str) -> None:
    now = datetime.now(UTC)
    made = [await withdrawal(url, now + timedelta(seconds=i)) for i in range(4)]
    agreeing, mismatched, missing, in_flight = made  # each its own seed: its own ids
    _failed, succeeded = tasks(url, mismatched)
    with psycopg.connect(url) as conn:
        for queue in (agreeing, mismatched):  # every hold as it should be...
            released, committed = tasks(url, queue)
            conn.execute(HOLD, (released, "released", queue["order_id"]))
            conn.execute(HOLD, (committed, "committed", queue["order_id"]))
        conn.execute("UPDATE ledger_holds SET status = 'frozen' WHERE key = %s", (succeeded,))
        # ...but these: a COMMITTED task's hold gone, a FAILED one's never there (fine)
        conn.execute(  # no holds yet, but a ledger call in flight: not judged
            "UPDATE order_tasks SET activity_token = 7 WHERE queue_id = %s", (in_flight["id"],)
        )
        unknown = str(uuid.uuid4())  # a hold under a task id we never had
        conn.execute(HOLD, (unknown, "frozen", "order-elsewhere"))
        conn.execute(HOLD, ("not-a-task-id", "frozen", "order-elsewhere"))
        conn.execute(HOLD, ("voided-elsewhere", "void", "order-elsewhere"))

    expected = {
        (succeeded, mismatched["order_id"], "status_mismatch", "frozen"),
        (tasks(url, missing)[1], missing["order_id"], "missing_hold", None),
        (unknown, "order-elsewhere", "unknown_hold", "frozen"),
        ("not-a-task-id", "order-elsewhere", "unknown_hold", "frozen"),
    }
    assert drift(url) == expected
    for order_id in (mismatched["order_id"], missing["order_id"], "order-elsewhere"):
        assert drift(url, "order_id = %s", order_id) == {r for r in expected if r[1] == order_id}
    for quiet in (agreeing, in_flight):
        assert drift(url, "order_id = %s", quiet["order_id"]) == set()


async def test_the_lookup_by_order_id_reads_no_table_whole(url: str) -> None:
    queue = await withdrawal(url, datetime.now(UTC))
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")  # an index that can serve is then used
        plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                "EXPLAIN SELECT * FROM v_ledger_drift WHERE order_id = %s", (queue["order_id"],)
            ).fetchall()
        )
    assert "Seq Scan" not in plan, plan


@pytest.mark.parametrize("orphan", ["withdrawal", "task"])
async def test_the_soak_sees_an_audit_row_naming_a_missing_withdrawal_or_task(
    url: str, orphan: str
) -> None:
    """The audit trail has no foreign keys (0017): the soak's outside check stands in."""
    queue = await withdrawal(url, datetime.now(UTC))
    assert audit_references(url).ok
    queue_id, task_id = (
        (uuid.uuid4(), None) if orphan == "withdrawal" else (queue["id"], uuid.uuid4())
    )
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO order_task_events (queue_id, task_id, event_type, actor,"
            " queue_created_at) VALUES (%s, %s, 'x', 'test', %s)",
            (queue_id, task_id, queue["created_at"]),
        )
    found = audit_references(url)
    assert not found.ok and found.value == 1
