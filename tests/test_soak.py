"""The short chaos soak runs in `make test`; its checks are themselves checked here."""

from __future__ import annotations

import subprocess
import sys

from engine.embedded import PROJECT_ROOT
from sandbox.client import StackClient
from sandbox.soak_checks import money_checks
from tests.conftest import executing_at_alpha


def test_short_chaos_soak_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandbox.soak", "--short"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert lines[-1].endswith("PASSED"), lines[-1]


def test_money_checks_see_a_hold_committed_behind_the_services_back(
    client: StackClient, migrated_url: str
) -> None:
    queue_id, task = executing_at_alpha(client)
    # cascade-core's ledger commits the hold without payment-service knowing
    client.sandbox.post(f"/ledger/v1/holds/{task['id']}/commit", json={}).raise_for_status()
    failing = {c.name for c in money_checks(client, migrated_url) if not c.ok}
    assert failing == {
        "holds out of step with the task's funds",
        "providers whose ledger sum differs",
    }
    client.send_webhook("alpha", task["id"], "succeeded")  # the service catches up
    client.wait_final(queue_id)
    assert all(c.ok for c in money_checks(client, migrated_url))
