"""Continuous reconciliation with the ledger (service/reconciliation.py): the ledger's
paged listing, the workers' runs (every second in the test stack), the findings they
keep, /metrics, and `service.ops reconcile`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from activities.ledger import HoldPage, LedgerHold
from sandbox.client import StackClient
from sandbox.stack import ROOT, wait_until
from service.reconciliation import ReconcileFailed, _check_page
from tests.conftest import executing_at_alpha

PAGE = 7  # small, so that a few dozen holds make several pages


def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


def ops_reconcile(client: StackClient, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.ops", "--json", "reconcile"],
        cwd=ROOT,
        env={**client.stack.env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def metric(client: StackClient, name: str, **labels: str) -> float | None:
    """A sample of the API's /metrics (every process's view, from SQL)."""
    text = httpx.get(f"{client.stack.api_url}/metrics", timeout=5).text
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    wanted = f"{name}{{{selector}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_the_ledger_lists_its_holds_in_pages_in_byte_order_of_key(client: StackClient) -> None:
    prefix = f"page-{uuid.uuid4().hex[:8]}"
    for suffix in ("B", "a", "é"):  # byte order: B < a < é (a locale's order differs)
        # a rollback of an unknown key leaves a void tombstone: no drift left behind
        client.sandbox.post(f"/ledger/v1/holds/{prefix}-{suffix}/rollback").raise_for_status()
    keys: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": PAGE} | ({"after": after} if after is not None else {})
        page = client.sandbox.get("/ledger/v1/holds", params=params).json()
        assert len(page["holds"]) <= PAGE
        keys += [h["key"] for h in page["holds"]]
        if page["next"] is None:
            break
        assert page["next"] == keys[-1]
        after = page["next"]
    whole = client.sandbox.get("/ledger/v1/holds").json()  # unpaged, as before paging
    assert set(whole) == {"holds"}
    assert sorted(keys) == sorted(h["key"] for h in whole["holds"])
    assert keys == sorted(keys, key=lambda k: k.encode())
    assert [k for k in keys if k.startswith(prefix)] == [
        f"{prefix}-B",
        f"{prefix}-a",
        f"{prefix}-é",
    ]
    refused = client.sandbox.get("/ledger/v1/holds", params={"limit": 0})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request"


def test_a_page_out_of_byte_order_or_that_does_not_move_on_stops_the_run() -> None:
    """The run deletes what a page's key range lacks: only right in byte order."""

    def page(keys: list[str], cursor: str | None) -> HoldPage:
        holds = [LedgerHold(k, "frozen", "alpha", "EUR", "1.00", None) for k in keys]
        return HoldPage(holds, cursor)

    _check_page(page(["B", "a", "é"], "é"), None, None)  # byte order, not a locale's
    _check_page(page([], None), "é", "é")  # the end
    for bad, after_key, cursor in (
        (page(["a", "B"], "B"), None, None),  # out of order
        (page(["a"], None), "b", "b"),  # behind the previous page
        (page([], "x"), "b", "b"),  # a next page, and nothing on this one
        (page(["c"], "b"), "b", "b"),  # the same cursor again
    ):
        with pytest.raises(ReconcileFailed):
            _check_page(bad, after_key, cursor)


def test_a_run_pages_through_the_ledger_and_rewrites_only_what_changed(
    client: StackClient, migrated_url: str
) -> None:
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    for i in range(4 * PAGE):  # void tombstones: holds that leave no drift behind
        client.sandbox.post(f"/ledger/v1/holds/{prefix}-{i:02d}/rollback").raise_for_status()
    gone = f"{prefix}-10x"  # after ten of them, before the rest: an inner page's range
    with psycopg.connect(migrated_url) as conn:  # a hold the ledger no longer has
        conn.execute(
            "INSERT INTO ledger_holds (key, status, fetched_at)"
            " VALUES (%s, 'released', now() - interval '1 hour')",
            (gone,),
        )
    done = ops_reconcile(client, RECONCILE_PAGE_SIZE=str(PAGE))
    assert done.returncode in (0, 1), done.stderr
    ledger = {h["key"]: h for h in client.sandbox.get("/ledger/v1/holds").json()["holds"]}
    assert len(ledger) >= 4 * PAGE
    rows = query(migrated_url, "SELECT key, status, fetched_at FROM ledger_holds")
    assert {r["key"] for r in rows} == set(ledger)  # `gone` went, page by page
    before = {r["key"]: r["fetched_at"] for r in rows}
    (last,) = query(migrated_url, "SELECT max(id) AS id FROM ledger_reconcile_runs")
    wait_until(  # a worker's run, begun after the command's ended
        lambda: query(
            migrated_url,
            "SELECT 1 FROM ledger_reconcile_runs WHERE id > %s AND finished_at IS NOT NULL",
            last["id"],
        ),
        15,
        "a worker's next run",
        every=0.1,
    )
    after = query(migrated_url, "SELECT key, fetched_at FROM ledger_holds")
    moved = {r["key"] for r in after if before.get(r["key"]) != r["fetched_at"]}
    # only holds the ledger changed in between (the workers' steps) were written again
    assert len(moved) <= 2, moved


def test_drift_reaches_metrics_within_a_period_and_resolves_once_it_agrees(
    client: StackClient, migrated_url: str
) -> None:
    def open_finding() -> list[dict[str, Any]]:
        return query(
            migrated_url,
            "SELECT * FROM ledger_findings WHERE key = %s AND resolved_at IS NULL",
            task["id"],
        )

    mismatched = metric(client, "ledger_drift_holds", kind="status_mismatch")
    assert mismatched is not None
    queue_id, task = executing_at_alpha(client)
    # cascade-core's ledger commits the hold behind payment-service's back
    client.sandbox.post(f"/ledger/v1/holds/{task['id']}/commit", json={}).raise_for_status()
    planted = time.monotonic()
    (finding,) = wait_until(open_finding, 15, "a worker's run to find the drift", every=0.1)
    seen = wait_until(
        lambda: (metric(client, "ledger_drift_holds", kind="status_mismatch") or 0) > mismatched,
        5,
        "the finding on /metrics",
    )
    assert seen and time.monotonic() - planted < 15  # RECONCILE_EVERY_S is 1 here
    assert (finding["kind"], finding["drift"]) == (
        "status_mismatch",
        "funds FROZEN but ledger committed",
    )
    last_run = metric(client, "ledger_reconcile_last_run_timestamp_seconds")
    assert last_run is not None and time.time() - last_run < 15

    printed = ops_reconcile(client)  # the same finding, first seen by the worker's run
    assert printed.returncode == 1, printed.stderr
    (row,) = [r for r in json.loads(printed.stdout) if r["key"] == task["id"]]
    assert (row["kind"], row["queue_id"], row["funds"]) == ("status_mismatch", queue_id, "FROZEN")
    assert row["first_seen_at"] == finding["first_seen_at"].isoformat(sep=" ")
    assert re.search(r"ledger drift: [1-9]", printed.stderr)

    client.send_webhook("alpha", task["id"], "succeeded")  # the service catches up
    assert client.wait_final(queue_id)["status"] == "COMPLETED"
    wait_until(lambda: not open_finding(), 15, "a later run to see it agree", every=0.1)
    wait_until(
        lambda: (metric(client, "ledger_drift_holds", kind="status_mismatch") or 0) <= mismatched,
        5,
        "the finding off /metrics",
    )
    (resolved,) = query(migrated_url, "SELECT * FROM ledger_findings WHERE key = %s", task["id"])
    assert resolved["resolved_at"] > resolved["last_seen_at"] >= resolved["first_seen_at"]
