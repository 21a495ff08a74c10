"""Cohort and objective metrics (service/settle_slo.py): each final withdrawal counts
in its policy's cohort, and each withdrawal is judged once against the settle
objective, whichever of its settling and the periodic check comes first."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.rows import dict_row

from activities.provider_config import ProviderConfig
from sandbox.client import StackClient
from sandbox.stack import wait_until
from service.settings import Settings
from service.settle_slo import SettleRecorder, count_overdue, settle_target_s
from tests.test_observability import delta, scrape

COHORT = {"policy": "cascade"}  # the shared stack's rollout: every m-1 withdrawal


def test_a_withdrawal_counts_in_its_cohort_and_on_time(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="decline")
    client.set_provider("beta", behaviour="delayed_webhook", webhook_delay_ms=200)
    before = scrape(client)
    view = client.wait_final(client.submit(["alpha", "beta"]).json()["id"])
    assert (view["status"], view["policy"]) == ("COMPLETED", "cascade")

    def counted() -> Any:
        after = scrape(client)
        done = delta(after, before, "withdrawal_outcomes_total", **COHORT, status="COMPLETED")
        answered = delta(after, before, "webhook_answers_total", provider="beta", code="2xx")
        return after if (done, answered) == (1, 1) else None

    after = wait_until(counted, 10, "the outcome's count")
    final = {**COHORT, "status": "COMPLETED"}
    assert delta(after, before, "withdrawal_time_to_final_seconds_count", **final) == 1
    assert delta(after, before, "withdrawal_attempts_count", **COHORT) == 1
    assert delta(after, before, "withdrawal_attempts_sum", **COHORT) == 2  # alpha, then beta
    assert delta(after, before, "withdrawal_settle_slo_total", **COHORT, result="on_time") == 1
    # the other cohorts' series exist, at whatever they were
    assert ("withdrawal_outcomes_total", (("policy", "single_shot"), ("status", "FAILED"))) in after


def test_a_withdrawal_is_judged_once_however_it_settles(
    client: StackClient, migrated_url: str
) -> None:
    client.set_provider("sla", behaviour="never_answers")  # a 1-s webhook SLA, then a person
    before = scrape(client)
    queue_id = client.submit(["sla"]).json()["id"]
    # Settling now, past a deadline of 0 s, would be late; it is not judged twice.
    assert asyncio.run(_judge_and_roll_back(migrated_url, queue_id)) == ["late", None]
    # Still unsettled (its webhook SLA has not passed): the periodic check judges it.
    assert asyncio.run(_count_overdue(migrated_url)) >= 1
    judged = _judgement(migrated_url, queue_id)
    assert judged["result"] == "overdue"
    asyncio.run(_count_overdue(migrated_url))  # again: nothing new for it

    client.wait_task_status(queue_id, 0, "MANUAL_CHECK")
    task_id = client.withdrawal(queue_id)["tasks"][0]["id"]
    resolved = client.ops.post(
        f"/ops/v1/tasks/{task_id}/resolve", json={"outcome": "negative", "reason": "no order"}
    )
    assert resolved.status_code == 200
    assert client.wait_final(queue_id)["status"] == "FAILED"

    def counted() -> Any:
        after = scrape(client)
        done = delta(after, before, "withdrawal_outcomes_total", **COHORT, status="FAILED")
        return after if done == 1 else None

    after = wait_until(counted, 10, "the outcome's count")
    assert delta(after, before, "withdrawal_manual_checks_total", **COHORT) == 1
    for result in ("on_time", "late", "overdue"):  # counted by the test's own check only
        assert delta(after, before, "withdrawal_settle_slo_total", **COHORT, result=result) == 0
    assert _judgement(migrated_url, queue_id) == judged  # neither settling judged it again


def test_the_settle_deadline_is_the_longest_webhook_sla_plus_a_margin() -> None:
    providers = {
        name: ProviderConfig.model_validate(
            {
                "name": name,
                "base_url": "http://x",
                "api_key": "k",
                "webhook_secrets": ["whsec_eA=="],
                "timing": {"webhook_sla_s": sla},
            }
        )
        for name, sla in (("a", 60.0), ("b", 900.0))
    }
    assert settle_target_s(Settings(database_url="x"), providers) == 1200.0
    assert settle_target_s(Settings(database_url="x", settle_slo_s=90.0), providers) == 90.0


async def _judge_and_roll_back(url: str, queue_id: str) -> list[str | None]:
    async with await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as conn:
        recorder = SettleRecorder(target_s=lambda: 0.0)
        judged = [(await recorder.judge(conn, queue_id))["judged"] for _ in range(2)]
        await conn.rollback()
    return judged


async def _count_overdue(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(
        url, row_factory=dict_row, autocommit=True
    ) as conn:
        return await count_overdue(conn, target_s=0.0)


def _judgement(url: str, queue_id: str) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT result, judged_at FROM settle_slo_results WHERE queue_id = %s", (queue_id,)
        ).fetchone()
    assert row is not None
    return row
