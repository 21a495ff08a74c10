"""Shared fixtures: a real PostgreSQL database per test session.

With DATABASE_URL unset the embedded PostgreSQL is started; either way a fresh
database is created for the session and dropped at the end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from devstack.embedded import database_url as server_url
from sandbox.servers import NatsServer


@contextlib.contextmanager
def fresh_database(suffix: str = "") -> Iterator[str]:
    """A new, empty database on the server for as long as the block lasts."""
    admin = server_url()
    name = f"ps_test_{os.getpid()}{suffix}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def own_stack(
    suffix: str, workdir: Path, specs: list[Any], nats_url: str, **options: Any
) -> Iterator[Any]:
    """A stack on its own migrated database, for tests whose state (circuits,
    versions, span files) must not meet the shared stack's."""
    from engine.migrations import migrate
    from sandbox.stack import Stack

    with fresh_database(suffix) as url:
        migrate(url)
        stack = Stack(url, workdir, specs, nats_url=nats_url, **options)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_url(database_url: str) -> str:
    from engine.migrations import migrate

    migrate(database_url)
    return database_url


# The providers every end-to-end test can use; each test sets the behaviours it needs.
FAST_TIMING = {"recheck_base_s": 0.3, "recheck_max_attempts": 3, "webhook_sla_s": 60.0}
TIMINGS: dict[str, dict[str, float]] = {
    "alpha": FAST_TIMING,
    "beta": FAST_TIMING,
    "gamma": FAST_TIMING,
    "delta": FAST_TIMING,
    # status-polling fallback for a provider that never sends webhooks
    "poller": {**FAST_TIMING, "poll_interval_s": 0.3, "status_timeout_s": 20.0},
    # a 15-minute webhook SLA compressed to one second
    "sla": {**FAST_TIMING, "webhook_sla_s": 1.0},
}
PROVIDERS = list(TIMINGS)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def stack(
    migrated_url: str, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from sandbox.stack import ProviderSpec, Stack

    specs = [ProviderSpec(name, timing=timing) for name, timing in TIMINGS.items()]
    workdir = tmp_path_factory.mktemp("stack")
    rollout = workdir / "rollout.toml"
    # Health routing is shared state (a provider's circuit); the tests that need it
    # use their own merchant and providers (tests/test_routing.py).
    rollout.write_text(
        'cascade_percent = 100\nhealth_routing = false\n[merchants]\nlegacy = "single_shot"\n'
        'routed = "health_cascade"\n'
    )
    # RECONCILE_EVERY_S: drift reaches /metrics in seconds (tests/test_reconciliation.py)
    extra = {"OUTBOX_BATCH": "20", "ROLLOUT_FILE": str(rollout), "RECONCILE_EVERY_S": "1"}
    running = Stack(migrated_url, workdir, specs, nats_url=nats_server.url, extra_env=extra)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(stack: Any) -> Iterator[Any]:
    from sandbox.client import StackClient
    from tests.openapi_contract import hook

    c = StackClient(stack, on_response=hook)  # every answer is checked against /openapi.json
    for name in PROVIDERS:  # every test starts from well-behaved providers and ledger
        c.set_provider(name, behaviour="instant", webhook_delay_ms=100)
    c.set_ledger_faults()
    yield c
    assert_ledger_matches_every_task(c, stack.database_url)


def _quiet(url: str) -> bool:
    """No money-moving job queued, retrying or running (timers don't count)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            " AND queue_name IN ('activities', 'webhooks')"
        ).fetchone()
    return row == (0,)


def assert_ledger_matches_every_task(c: Any, url: str) -> None:
    """After every scenario: the ledger's money operations match each task's funds."""
    from sandbox.stack import wait_until

    wait_until(lambda: _quiet(url), 30, "activity jobs to drain")
    # A step run in the API process right after its commit is no job: its result
    # (a commit's, say) may land a moment after the ledger moved. Poll until they
    # agree; a real disagreement outlasts the deadline and is reported.
    mismatched: list[tuple[str, str, list[str]]] = []

    def agree() -> bool:
        mismatched[:] = _ledger_mismatches(c, url)
        return not mismatched

    with contextlib.suppress(TimeoutError):  # reported below, with what disagrees
        wait_until(agree, 10, "the ledger and the tasks to agree", every=0.2)
    assert not mismatched, f"ledger and tasks disagree: {mismatched}"


def _ledger_mismatches(c: Any, url: str) -> list[tuple[str, str, list[str]]]:
    from sandbox.client import expected_ledger_ops

    ops = c.ledger_ops()
    with psycopg.connect(url) as conn:
        tasks = conn.execute("SELECT id::text, funds::text FROM order_tasks").fetchall()
    mismatched = []
    for task_id, funds in tasks:
        seen = ops.get(task_id, [])
        if seen != expected_ledger_ops({"funds": funds}, "freeze" in seen):
            mismatched.append((task_id, funds, seen))
    return mismatched


def executing_at_alpha(client: Any) -> tuple[str, dict[str, Any]]:
    """A withdrawal over alpha then beta whose alpha order is accepted and stays open."""
    client.set_provider("alpha", behaviour="never_answers")
    queue_id = client.submit(["alpha", "beta"]).json()["id"]
    client.wait_task_status(queue_id, 0, "EXECUTING")
    return queue_id, client.withdrawal(queue_id)["tasks"][0]
