"""Crash recovery and the invariants the database enforces on its own."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from sandbox.client import StackClient
from sandbox.stack import wait_until


def _doing_job(url: str, task_id: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'"
            " AND args->>'task_id' = %s",
            (task_id,),
        ).fetchone()
    return bool(row and row[0])


def test_sigkilled_processes_mid_step_are_recovered_without_double_spend(
    client: StackClient, migrated_url: str
) -> None:
    """Both ways a step runs, both killed in the middle of a ledger call: the API
    running the freeze right after the submission's commit (the sweep resumes it
    as a job), then the worker running that job (the stalled-job retry resumes it)."""
    client.set_ledger_faults(latency_ms=2500)  # every ledger call is certainly in flight
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    task_id = client.withdrawal(queue_id)["tasks"][0]["id"]
    client.stack.restart_api()  # SIGKILL: its freeze call dies with it
    wait_until(lambda: _doing_job(migrated_url, task_id), 40, "the sweep's freeze job to run")
    client.stack.kill_workers()
    client.set_ledger_faults()
    for _ in range(2):
        client.stack.start_worker()
    view = client.wait_final(queue_id, timeout=60)
    assert view["status"] == "COMPLETED"
    assert client.ledger_ops()[task_id] == ["freeze", "commit"]  # one freeze, one commit
    assert client.provider_orders()[task_id]["creates"] == 1  # one order at the provider
    with psycopg.connect(migrated_url) as conn:
        retried = conn.execute(
            "SELECT count(*) FROM procrastinate_events e JOIN procrastinate_jobs j"
            " ON j.id = e.job_id WHERE e.type = 'retried' AND j.args->>'task_id' = %s",
            (task_id,),
        ).fetchone()
    assert retried is not None


def _insert_queue(conn: psycopg.Connection[Any]) -> str:
    queue_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor, currency)"
        " VALUES (%s, %s, 'h', 'm', 100, 'EUR')",
        (queue_id, f"inv-{queue_id}"),
    )
    return queue_id


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("CREATING", "FROZEN"), ("EXECUTING", "FROZEN")),  # two live attempts
        (("SUCCEEDED", "COMMITTED"), ("SUCCEEDED", "COMMITTED")),  # two successes
        (("FAILED", "RELEASED"), ("FAILED", "FROZEN")),  # a failed task still holding money
        (("PENDING", "FROZEN"), ("PENDING", "NONE")),  # money held before starting
    ],
)
def test_database_refuses_money_invariant_violations(
    migrated_url: str, first: tuple[str, str], second: tuple[str, str]
) -> None:
    with psycopg.connect(migrated_url) as conn:
        queue_id = _insert_queue(conn)
        insert = (
            "INSERT INTO order_tasks (id, queue_id, position, provider, status, funds)"
            " VALUES (%s, %s, %s, 'alpha', %s, %s)"
        )
        with pytest.raises(psycopg.errors.IntegrityError):
            conn.execute(insert, (str(uuid.uuid4()), queue_id, 0, *first))
            conn.execute(insert, (str(uuid.uuid4()), queue_id, 1, *second))


def test_audit_trail_is_append_only(client: StackClient, migrated_url: str) -> None:
    view = client.wait_final(client.submit(["alpha"]).json()["id"])
    for statement in (
        "UPDATE order_task_events SET actor = 'x' WHERE queue_id = %s",
        "DELETE FROM order_task_events WHERE queue_id = %s",
    ):
        with (
            psycopg.connect(migrated_url) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(statement, (view["id"],))
    with psycopg.connect(migrated_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("TRUNCATE order_task_events CASCADE")
