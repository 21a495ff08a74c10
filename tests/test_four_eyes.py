"""Four-eyes on money (issue 21): a manual-check decision that needs a second person
is a proposal, and moves nothing until an approver who is not its proposer
approves it. The rules without a database; the flow against the real stack
(its workers settle what an approval asks for) with constructed people; the
routes with people signed in at the stack's issuer."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import psycopg
import pytest

from engine.rows import QueueRow
from sandbox.client import StackClient
from sandbox.stack import LEDGER_TOKEN, Stack
from service import approvals
from service.four_eyes import (
    APPROVED,
    EXPIRED,
    PENDING,
    REJECTED,
    SUPERSEDED,
    FourEyesRules,
    Proposal,
    TaskNow,
    decider_refusal,
    why_not_current,
)
from service.models import BadRequest
from service.principals import ADMIN, APPROVER, RESOLVER, Principal
from service.settings import Settings
from service.wiring import Services, open_services
from tests.test_console import sign_in
from tests.test_forensics import ops

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://idp.example"
ANA = Principal(ISSUER, "sub-ana", "ana@example.com", frozenset({RESOLVER}))
BOB = Principal(ISSUER, "sub-bob", "bob@example.com", frozenset({APPROVER}))
VIC = Principal(ISSUER, "sub-vic", "vic@example.com", frozenset())
ADA = Principal(ISSUER, "sub-ada", "ada@example.com", frozenset({ADMIN}))
# Ana again, with the approver role too and another email: the same person.
ANA_AS_APPROVER = Principal(ISSUER, "sub-ana", "ana.b@example.com", frozenset({RESOLVER, APPROVER}))
EUR_1000 = FourEyesRules(every_positive=True, above={"EUR": 100_000})


# The rules, without a database ----------------------------------------------------------
def test_every_positive_decision_needs_a_second_person_by_default() -> None:
    assert FourEyesRules().needs_approval(True, 1, "EUR")
    assert not FourEyesRules().needs_approval(False, 10**15, "EUR")


def test_an_amount_above_its_currencys_threshold_needs_a_second_person() -> None:
    rules = FourEyesRules(every_positive=False, above={"EUR": 100_000, "JPY": 5_000})
    assert not rules.needs_approval(False, 100_000, "EUR")  # at the threshold: alone
    assert rules.needs_approval(False, 100_001, "EUR")
    assert rules.needs_approval(True, 100_001, "EUR")
    assert not rules.needs_approval(True, 100_000, "EUR")
    assert rules.needs_approval(False, 5_001, "JPY")
    assert not rules.needs_approval(False, 10**15, "USD")  # no threshold for USD


def test_the_threshold_setting_is_parsed_exactly_into_minor_units() -> None:
    settings = Settings(
        database_url="postgresql:///unused",
        four_eyes_above="EUR=1000.00, KWD=1.250,JPY=500",
        four_eyes_positive=False,
        four_eyes_ttl_s=3600,
    )
    rules = FourEyesRules.from_settings(settings)
    assert dict(rules.above) == {"EUR": 100_000, "KWD": 1_250, "JPY": 500}
    assert (rules.every_positive, rules.ttl) == (False, timedelta(hours=1))
    for bad in ["EUR=1e3", "EUR=1000.001", "EUR=0.1,EUR=2", "XYZ=1", "EUR"]:
        with pytest.raises(ValueError, match="FOUR_EYES_ABOVE"):
            Settings(database_url="postgresql:///unused", four_eyes_above=bad)


def _proposal(status: str = PENDING, version: int = 7) -> Proposal:
    return Proposal(
        id="p",
        task_id="t",
        queue_id="q",
        outcome="positive",
        reason="statement",
        proposed_by=ANA.actor,
        proposer_issuer=ANA.issuer,
        proposer_subject=ANA.subject,
        proposed_at=NOW,
        task_version=version,
        status=status,
        decided_by=None,
        decided_at=None,
        decision_reason=None,
        expires_at=NOW + timedelta(hours=24),
    )


def _task(status: str = "MANUAL_CHECK", version: int = 7) -> TaskNow:
    return TaskNow(cast(QueueRow, {}), status, version, None, 1_000, "EUR")


def _code(refused: BadRequest | None) -> tuple[int, str] | None:
    return None if refused is None else (refused.status, refused.code)


def test_only_an_approver_who_is_not_the_proposer_decides_a_proposal() -> None:
    assert _code(decider_refusal(_proposal(), VIC)) == (403, "forbidden")
    assert _code(decider_refusal(_proposal(), ANA)) == (403, "forbidden")
    assert _code(decider_refusal(_proposal(), ANA_AS_APPROVER)) == (403, "own_proposal")
    assert decider_refusal(_proposal(), BOB) is None
    assert decider_refusal(_proposal(), ADA) is None  # admin holds every role
    assert _code(decider_refusal(_proposal(APPROVED), BOB)) == (409, "proposal_closed")


def test_a_proposal_is_current_until_it_expires_or_its_task_moves_on() -> None:
    assert why_not_current(_proposal(), _task(), NOW) is None
    assert why_not_current(_proposal(), _task(), NOW + timedelta(hours=24)) == EXPIRED
    assert why_not_current(_proposal(), _task(version=8), NOW) == SUPERSEDED
    assert why_not_current(_proposal(), _task("CANCELLED", 7), NOW) == SUPERSEDED


# The flow, against the stack ---------------------------------------------------------------
@pytest.fixture(scope="module")
async def services(stack: Stack) -> AsyncIterator[Services]:
    """This process's own services on the stack's database; every step is a job
    (INLINE_STEPS=0), which the stack's workers run."""
    settings = Settings(
        database_url=stack.database_url,
        providers_file=stack.workdir / "providers.toml",
        ledger_url=f"{stack.sandbox_url}/ledger",
        ledger_token=LEDGER_TOKEN,
    )
    opened = await open_services(settings, pool_size=2, inline_steps=0)
    try:
        yield opened
    finally:
        await opened.close()


def in_manual_check(client: StackClient, amount: str = "10.00") -> tuple[str, str]:
    """A withdrawal whose only task waits for a person (its provider never answers)."""
    client.set_provider("sla", behaviour="never_answers")
    order_id = f"four-eyes-{os.urandom(4).hex()}"
    queue_id = client.submit(["sla"], amount=amount, order_id=order_id).json()["id"]
    client.wait_task_status(queue_id, 0, "MANUAL_CHECK")
    return queue_id, str(client.withdrawal(queue_id)["tasks"][0]["id"])


async def decide(svc: Services, person: Principal, task_id: str, positive: bool, **kw: Any) -> Any:
    rules = kw.pop("rules", EUR_1000)
    async with svc.pool.connection() as conn:
        decision = (positive, kw.pop("reason", "provider statement"))
        return await approvals.decide(conn, svc.engine, rules, person, task_id, decision, **kw)


async def approve(svc: Services, person: Principal, proposal_id: str, **kw: Any) -> Proposal:
    async with svc.pool.connection() as conn:
        return await approvals.approve(conn, svc.engine, person, proposal_id, **kw)


async def reject(svc: Services, person: Principal, proposal_id: str, reason: str) -> Proposal:
    async with svc.pool.connection() as conn:
        return await approvals.reject(conn, svc.engine, person, proposal_id, reason)


async def refused(call: Any) -> tuple[int, str]:
    with pytest.raises(BadRequest) as caught:
        await call
    return caught.value.status, caught.value.code


def task_of(client: StackClient, queue_id: str) -> dict[str, Any]:
    return client.withdrawal(queue_id)["tasks"][0]  # type: ignore[no-any-return]


def proposal_status(url: str, proposal_id: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT status FROM manual_check_proposals WHERE id = %s", (proposal_id,)
        ).fetchone()
    assert row is not None
    return str(row[0])


async def test_a_positive_decision_waits_for_an_approver_then_pays(
    client: StackClient, services: Services
) -> None:
    queue_id, task_id = in_manual_check(client)
    proposed = await decide(services, ANA, task_id, True)
    proposal = proposed.proposal
    assert proposal is not None and proposal.status == PENDING
    assert proposal.proposed_by == ANA.actor
    # Nothing moved: the hold is frozen, the task waits, the ledger saw only the freeze.
    assert (task_of(client, queue_id)["status"], task_of(client, queue_id)["funds"]) == (
        "MANUAL_CHECK",
        "FROZEN",
    )
    assert client.ledger_ops()[task_id] == ["freeze"]
    assert await refused(approve(services, VIC, proposal.id)) == (403, "forbidden")
    assert await refused(approve(services, ANA_AS_APPROVER, proposal.id)) == (403, "own_proposal")
    assert await refused(decide(services, ANA, task_id, False)) == (409, "proposal_pending")
    assert client.ledger_ops()[task_id] == ["freeze"]

    approved = await approve(services, BOB, proposal.id)
    assert (approved.status, approved.decided_by) == (APPROVED, BOB.actor)
    view = client.wait_final(queue_id)
    assert (view["status"], view["tasks"][0]["status"]) == ("COMPLETED", "SUCCEEDED")
    assert client.ledger_ops()[task_id] == ["freeze", "commit"]
    by_type = {e["event_type"]: e for e in client.events(queue_id)}
    assert by_type["manual_check_proposed"]["actor"] == ANA.actor
    assert by_type["manual_check_approved"]["actor"] == BOB.actor
    assert by_type["manual_check_approved"]["payload"]["proposed_by"] == ANA.actor
    resolved = by_type["manual_resolved"]
    assert (resolved["actor"], resolved["payload"]["operator"]) == (BOB.actor, ANA.actor)
    assert await refused(approve(services, ADA, proposal.id)) == (409, "proposal_closed")


async def test_a_viewer_cannot_decide_and_a_resolver_cannot_approve(
    client: StackClient, services: Services
) -> None:
    queue_id, task_id = in_manual_check(client)
    assert await refused(decide(services, VIC, task_id, False)) == (403, "forbidden")
    proposal = (await decide(services, ANA, task_id, True)).proposal
    assert proposal is not None
    resolver = Principal(ISSUER, "sub-rex", "rex@example.com", frozenset({RESOLVER}))
    assert await refused(approve(services, resolver, proposal.id)) == (403, "forbidden")
    assert await refused(reject(services, resolver, proposal.id, "no")) == (403, "forbidden")
    assert task_of(client, queue_id)["status"] == "MANUAL_CHECK"
    await reject(services, BOB, proposal.id, "cleanup")
    await decide(services, ANA, task_id, False)
    assert client.wait_final(queue_id)["status"] == "FAILED"


async def test_below_the_threshold_a_negative_decision_applies_at_once(
    client: StackClient, services: Services
) -> None:
    queue_id, task_id = in_manual_check(client)
    decided = await decide(services, ANA, task_id, False, reason="no such order at sla")
    assert decided.proposal is None and decided.queue_id == queue_id
    view = client.wait_final(queue_id)
    assert (view["status"], view["tasks"][0]["funds"]) == ("FAILED", "RELEASED")
    resolved = [e for e in client.events(queue_id) if e["event_type"] == "manual_resolved"]
    assert [(e["actor"], e["payload"]["operator"]) for e in resolved] == [(ANA.actor, ANA.actor)]


async def test_above_the_threshold_a_negative_decision_waits_too(
    client: StackClient, services: Services
) -> None:
    queue_id, task_id = in_manual_check(client, amount="1000.01")
    proposal = (await decide(services, ANA, task_id, False)).proposal
    assert proposal is not None and proposal.outcome == "negative"
    assert client.ledger_ops()[task_id] == ["freeze"]
    await approve(services, ADA, proposal.id)
    view = client.wait_final(queue_id)
    assert (view["status"], view["tasks"][0]["funds"]) == ("FAILED", "RELEASED")


async def test_a_rejected_proposal_leaves_the_task_in_manual_check(
    client: StackClient, services: Services
) -> None:
    queue_id, task_id = in_manual_check(client)
    proposal = (await decide(services, ANA, task_id, True)).proposal
    assert proposal is not None
    rejected = await reject(services, BOB, proposal.id, "the statement is for another order")
    assert (rejected.status, rejected.decision_reason) == (
        REJECTED,
        "the statement is for another order",
    )
    assert task_of(client, queue_id)["status"] == "MANUAL_CHECK"
    assert client.ledger_ops()[task_id] == ["freeze"]
    assert await refused(approve(services, BOB, proposal.id)) == (409, "proposal_closed")
    event = next(e for e in client.events(queue_id) if e["event_type"] == "manual_check_rejected")
    assert (event["actor"], event["payload"]["decision_reason"]) == (
        BOB.actor,
        "the statement is for another order",
    )
    await decide(services, ANA, task_id, False)  # the next decision: no proposal in flight
    assert client.wait_final(queue_id)["status"] == "FAILED"


async def test_an_approval_after_the_task_moved_on_is_refused_and_moves_nothing(
    client: StackClient, services: Services, migrated_url: str
) -> None:
    queue_id, task_id = in_manual_check(client)
    proposal = (await decide(services, ANA, task_id, True)).proposal
    assert proposal is not None
    cancelled = client.api.post(f"/v1/withdrawals/{queue_id}/cancel", json={"reason": "customer"})
    assert cancelled.status_code == 202
    assert task_of(client, queue_id)["cancel_requested"] is True
    # Refused: either this approval finds the task moved on, or the workers' checks
    # closed the proposal a moment before it.
    status, code = await refused(approve(services, BOB, proposal.id))
    assert (status, code) in {(409, "proposal_superseded"), (409, "proposal_closed")}
    assert proposal_status(migrated_url, proposal.id) == SUPERSEDED
    task = task_of(client, queue_id)
    assert (task["status"], task["funds"]) == ("MANUAL_CHECK", "FROZEN")
    assert client.ledger_ops()[task_id] == ["freeze"]
    types = [e["event_type"] for e in client.events(queue_id)]
    assert "manual_check_superseded" in types and "manual_resolved" not in types
    await decide(services, ANA, task_id, False)
    assert client.wait_final(queue_id)["status"] == "CANCELLED"


async def test_a_release_proposed_before_the_provider_paid_is_never_applied(
    client: StackClient, services: Services, migrated_url: str
) -> None:
    queue_id, task_id = in_manual_check(client, amount="1000.01")  # above: a proposal
    proposal = (await decide(services, ANA, task_id, False)).proposal
    assert proposal is not None
    client.send_webhook("sla", task_id, "succeeded")  # the provider paid after all
    view = client.wait_final(queue_id)
    assert (view["status"], view["tasks"][0]["status"]) == ("COMPLETED", "SUCCEEDED")
    status, code = await refused(approve(services, BOB, proposal.id))
    assert (status, code) in {(409, "proposal_superseded"), (409, "proposal_closed")}
    assert proposal_status(migrated_url, proposal.id) == SUPERSEDED
    assert client.ledger_ops()[task_id] == ["freeze", "commit"]  # never released


async def test_a_proposal_expires_and_an_approval_after_that_is_refused(
    client: StackClient, services: Services, migrated_url: str
) -> None:
    hour = FourEyesRules(every_positive=True, ttl=timedelta(hours=1))
    queue_id, task_id = in_manual_check(client)
    first = (await decide(services, ANA, task_id, True, rules=hour)).proposal
    assert first is not None
    later = first.expires_at + timedelta(seconds=1)
    assert await refused(approve(services, BOB, first.id, now=later)) == (409, "proposal_expired")
    assert proposal_status(migrated_url, first.id) == EXPIRED
    # The workers' periodic checks expire them too (here: told it is an hour later).
    second = (await decide(services, ANA, task_id, True, rules=hour)).proposal
    assert second is not None
    async with services.pool.connection() as conn:
        assert await approvals.close_stale(conn, services.engine.storage, later) >= 1
    assert proposal_status(migrated_url, second.id) == EXPIRED
    assert await refused(approve(services, BOB, second.id)) == (409, "proposal_closed")
    assert client.ledger_ops()[task_id] == ["freeze"]
    expired = [e for e in client.events(queue_id) if e["event_type"] == "manual_check_expired"]
    assert [e["actor"] for e in expired] == ["system", "system"]
    await decide(services, ANA, task_id, False)
    assert client.wait_final(queue_id)["status"] == "FAILED"


async def test_the_database_refuses_a_proposal_decided_by_its_proposer(
    client: StackClient, services: Services, migrated_url: str
) -> None:
    queue_id, task_id = in_manual_check(client)
    proposal = (await decide(services, ANA, task_id, True)).proposal
    assert proposal is not None
    with psycopg.connect(migrated_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "UPDATE manual_check_proposals SET status = 'approved', decided_by = %s,"
            " decider_issuer = %s, decider_subject = %s, decided_at = now() WHERE id = %s",
            (ANA.actor, ANA.issuer, ANA.subject, proposal.id),
        )
    await reject(services, BOB, proposal.id, "cleanup")
    await decide(services, ANA, task_id, False)
    assert client.wait_final(queue_id)["status"] == "FAILED"


# The routes, with people signed in at the stack's issuer (sandbox/issuer.py) ------------
def actor(client: StackClient, name: str) -> str:
    return f"person:{name}@example.com (sub {name} at {client.stack.issuer_url})"


def test_the_ops_api_proposes_and_another_person_approves(client: StackClient) -> None:
    queue_id, task_id = in_manual_check(client)
    ada, bob, vic = client.person("ada"), client.person("bob"), client.person("vic")
    body = {"outcome": "positive", "reason": "the provider's statement shows it"}
    assert vic.post(f"/ops/v1/tasks/{task_id}/resolve", json=body).status_code == 403
    proposed = ada.post(f"/ops/v1/tasks/{task_id}/resolve", json=body)  # an admin resolves too
    assert proposed.status_code == 202, proposed.text
    proposal = proposed.json()["proposal"]
    assert (proposal["status"], proposal["proposed_by"]) == ("pending", actor(client, "ada"))
    waiting = {p["id"]: p for p in vic.get("/ops/v1/approvals").json()["proposals"]}
    assert (waiting[proposal["id"]]["amount"], waiting[proposal["id"]]["task_id"]) == (
        "10.00",
        task_id,
    )
    approve_path = f"/ops/v1/approvals/{proposal['id']}/approve"
    own = ada.post(approve_path, json={})  # ada holds approver, but proposed it
    assert (own.status_code, own.json()["error"]["code"]) == (403, "own_proposal")
    assert vic.post(approve_path, json={}).status_code == 403
    assert client.ops.post(approve_path, json={}).status_code == 403  # ana: a resolver only
    assert client.ledger_ops()[task_id] == ["freeze"]

    approved = bob.post(approve_path, json={"reason": "statement checked"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["proposal"]["decided_by"] == actor(client, "bob")
    assert client.wait_final(queue_id)["status"] == "COMPLETED"
    assert client.ledger_ops()[task_id] == ["freeze", "commit"]
    timeline = [(e["event_type"], e["actor"]) for e in client.events(queue_id)]
    assert ("manual_check_proposed", actor(client, "ada")) in timeline
    assert ("manual_check_approved", actor(client, "bob")) in timeline
    assert ("manual_resolved", actor(client, "bob")) in timeline
    again = bob.post(approve_path, json={})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "proposal_closed")


def test_the_approval_routes_refuse_what_names_nothing(client: StackClient) -> None:
    queue_id, task_id = in_manual_check(client)
    bob = client.person("bob")
    for path in (f"/ops/v1/approvals/{uuid.uuid4()}/approve", "/ops/v1/approvals/nope/approve"):
        missing = bob.post(path, json={})
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    proposed = client.ops.post(
        f"/ops/v1/tasks/{task_id}/resolve", json={"outcome": "positive", "reason": "paid"}
    )
    reject_path = f"/ops/v1/approvals/{proposed.json()['proposal']['id']}/reject"
    assert bob.post(reject_path, json={}).status_code == 422  # a rejection says why
    assert bob.post(reject_path, json={"reason": "a\u0000b"}).status_code == 422
    rejected = bob.post(reject_path, json={"reason": "not our order"})
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["withdrawal"]["tasks"][0]["status"] == "MANUAL_CHECK"
    negative = {"outcome": "negative", "reason": "no payout"}
    assert client.ops.post(f"/ops/v1/tasks/{task_id}/resolve", json=negative).status_code == 200
    assert client.wait_final(queue_id)["status"] == "FAILED"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None
    return found.group(1)


def test_the_console_shows_approve_buttons_only_to_approvers_who_did_not_propose(
    client: StackClient,
) -> None:
    queue_id, task_id = in_manual_check(client)
    order_id = client.withdrawal(queue_id)["order_id"]
    base = client.stack.api_url
    with httpx.Client(base_url=base, follow_redirects=False) as ada:
        sign_in(ada, "ada")  # an admin: a resolver and an approver
        task_page = ada.get(f"/console/tasks/{task_id}").text
        assert "no money moves until another person" in task_page
        form = {"outcome": "positive", "reason": "statement", "csrf": csrf_of(task_page)}
        proposed = ada.post(f"/console/tasks/{task_id}/resolve", data=form)
        assert (proposed.status_code, proposed.headers["location"]) == (
            303,
            f"/console/tasks/{task_id}",
        )
        task_page = ada.get(f"/console/tasks/{task_id}").text
        assert "You proposed it" in task_page and "Approve as" not in task_page
        listed = ada.get("/console/approvals").text
        row = next(r for r in listed.split("<tr>") if order_id in r)
        assert "your proposal" in row and "Approve as" not in row
        waiting = client.person("ada").get("/ops/v1/approvals").json()["proposals"]
        proposal_id = next(p["id"] for p in waiting if p["task_id"] == task_id)
        own = ada.post(f"/console/approvals/{proposal_id}/approve", data={"csrf": csrf_of(listed)})
        assert own.status_code == 403 and "another person than its proposer" in own.text
    with httpx.Client(base_url=base, follow_redirects=False) as bob:
        sign_in(bob, "bob")
        listed = bob.get("/console/approvals").text
        row = next(r for r in listed.split("<tr>") if order_id in r)
        assert "Approve as bob@example.com" in row
        path = f"/console/approvals/{proposal_id}/reject"
        assert bob.post(path, data={"csrf": csrf_of(listed)}).status_code == 422  # why?
        done = bob.post(path, data={"csrf": csrf_of(listed), "reason": "another order"})
        assert (done.status_code, done.headers["location"]) == (
            303,
            f"/console/withdrawals/{queue_id}",
        )
    assert client.withdrawal(queue_id)["tasks"][0]["status"] == "MANUAL_CHECK"
    negative = {"outcome": "negative", "reason": "no payout"}
    assert client.ops.post(f"/ops/v1/tasks/{task_id}/resolve", json=negative).status_code == 200
    assert client.wait_final(queue_id)["status"] == "FAILED"


def test_the_command_line_proposes_and_another_person_approves(client: StackClient) -> None:
    queue_id, task_id = in_manual_check(client)
    proposed = ops(client, "resolve", task_id, "positive", "--reason", "statement", person="ana")
    assert proposed.returncode == 0, proposed.stderr
    (row,) = json.loads(proposed.stdout)
    assert row["waits"] == "an approver" and client.ledger_ops()[task_id] == ["freeze"]
    ana = ops(client, "approve", row["proposal"], person="ana")
    assert ana.returncode != 0 and "lacks the approver role" in ana.stderr
    approved = ops(client, "approve", row["proposal"], person="bob")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)[0]["status"] == APPROVED
    assert client.wait_final(queue_id)["status"] == "COMPLETED"
    again = ops(client, "reject", row["proposal"], "--reason", "late", person="ada")
    assert again.returncode != 0 and "already approved" in again.stderr
