"""PostgreSQL crashes under the running API: clients get a 503 they can retry, never a
500, and the API recovers on its own when the database is back."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.migrations import migrate
from sandbox.client import StackClient
from sandbox.servers import RestartablePostgres
from sandbox.stack import ProviderSpec, Stack, wait_until
from tests.openapi_contract import hook


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartablePostgres]:
    server = RestartablePostgres(tmp_path_factory.mktemp("own-pg") / "pg")
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def stack_on(
    server: RestartablePostgres, workdir: Path, name: str, spec: ProviderSpec, **options: Any
) -> Iterator[StackClient]:
    """A stack on a fresh database of the test's own server."""
    url = server.database(name)
    migrate(url)
    stack = Stack(url, workdir, [spec], **options)
    stack.start()
    try:
        yield StackClient(stack, on_response=hook)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def api_only(
    own_postgres: RestartablePostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackClient]:
    """The sandbox and the API on the test's own database; no worker is needed."""
    workdir = tmp_path_factory.mktemp("outage-stack")
    extra = {"DB_ACQUIRE_TIMEOUT_S": "1"}
    with stack_on(
        own_postgres, workdir, "outage", ProviderSpec("alpha"), workers=0, extra_env=extra
    ) as c:
        yield c


def submission() -> dict[str, Any]:
    return {
        "order_id": f"ord-{uuid.uuid4().hex[:10]}",
        "merchant_id": "m-1",
        "amount": "10.00",
        "currency": "EUR",
        "cascade": ["alpha"],
    }


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert "PGSQL" not in response.text and "socket" not in response.text  # nothing leaks


def test_database_crash_answers_503_then_recovers_without_a_restart(
    api_only: StackClient, own_postgres: RestartablePostgres
) -> None:
    client = api_only
    api_process = next(p for p in client.stack.procs if "server.py" in str(p.args))
    known = client.submit(["alpha"]).json()["id"]
    own_postgres.crash()
    try:
        started = time.monotonic()
        assert_unavailable(client.api.post("/v1/withdrawals", json=submission()))
        assert_unavailable(client.api.get(f"/v1/withdrawals/{known}"))
        assert_unavailable(client.api.get(f"/v1/withdrawals/{known}/events"))
        assert_unavailable(client.api.post(f"/v1/withdrawals/{known}/cancel", json={}))
        assert_unavailable(client.ops.get("/ops/v1/manual-checks"))
        assert time.monotonic() - started < 15  # each waited about DB_ACQUIRE_TIMEOUT_S
        assert client.api.get("/readyz").status_code == 503
        assert client.api.get("/healthz").status_code == 200  # the process itself is fine
    finally:
        own_postgres.start()
    wait_until(
        lambda: client.api.get(f"/v1/withdrawals/{known}").status_code == 200,
        30,
        "the API to reach the database again",
        every=0.2,
    )
    again = client.api.post("/v1/withdrawals", json=submission())
    assert again.status_code == 201, again.text
    assert client.api.get(f"/v1/withdrawals/{again.json()['id']}").status_code == 200
    assert api_process.poll() is None  # the same API process, never restarted


@pytest.fixture(scope="module")
def with_workers(
    own_postgres: RestartablePostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackClient]:
    workdir = tmp_path_factory.mktemp("outage-workers")
    alpha = ProviderSpec("alpha", behaviour="delayed_webhook", webhook_delay_ms=300)
    with stack_on(own_postgres, workdir, "outage_workers", alpha, workers=2) as c:
        yield c


def test_withdrawals_in_flight_finish_after_a_database_crash_and_no_worker_exits(
    with_workers: StackClient, own_postgres: RestartablePostgres
) -> None:
    client = with_workers
    in_flight = [client.submit(["alpha"]).json()["id"] for _ in range(8)]
    own_postgres.crash()  # mid-flight: freezes, creates, webhooks and commits are cut off
    time.sleep(3)  # the outage itself, not synchronisation
    own_postgres.start()
    wait_until(lambda: client.api.get("/readyz").status_code == 200, 30, "the API")
    after = [client.submit(["alpha"]).json()["id"] for _ in range(4)]
    for queue_id in in_flight + after:
        assert client.wait_final(queue_id, timeout=90)["status"] == "COMPLETED"
    client.stack.assert_running()  # every worker survived the restart, none was restarted
    ops = client.ledger_ops()
    for queue_id in in_flight + after:
        task = client.withdrawal(queue_id)["tasks"][0]
        assert (task["funds"], ops[task["id"]]) == ("COMMITTED", ["freeze", "commit"])
