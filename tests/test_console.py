"""The support console: a person signs in at the OpenID issuer (the stack's local
one, its login form), finds a withdrawal in manual check, resolves it with a
reason; it waits for a second person (four-eyes), who approves it on the
approvals page; both identities are in the timeline, in a real browser
(Playwright with Debian's chromium); and nothing changes without the session, a
forged cookie, the CSRF token or the resolver role."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.embedded import PROJECT_ROOT
from sandbox.client import StackClient
from sandbox.stack import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = PROJECT_ROOT / "docs" / "console"  # refreshed with UPDATE_SCREENSHOTS=1


def in_manual_check(client: StackClient) -> tuple[str, str]:
    client.set_provider("sla", behaviour="never_answers")
    queue_id = client.submit(["sla"], order_id=f"console-{os.urandom(3).hex()}").json()["id"]
    client.wait_task_status(queue_id, 0, "MANUAL_CHECK")
    return queue_id, str(client.withdrawal(queue_id)["tasks"][0]["id"])


def test_a_person_signs_in_and_resolves_a_manual_check_in_the_browser(
    client: StackClient,
) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make setup installs Debian's chromium as root)")
    from playwright.sync_api import sync_playwright

    queue_id, task_id = in_manual_check(client)
    order_id = client.withdrawal(queue_id)["order_id"]
    base = client.stack.api_url
    ana = f"person:ana@example.com (sub ana at {client.stack.issuer_url})"
    bob = f"person:bob@example.com (sub bob at {client.stack.issuer_url})"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/console")
        assert page.url.endswith("/console/login")  # no session: the sign-in page
        shoot(page, "login")
        page.click("button:has-text('Sign in')")
        page.wait_for_url(f"{client.stack.issuer_url}/oauth2/authorize?*")  # the issuer's form
        page.click("button[name=sub][value=ana]")
        page.wait_for_url(f"{base}/console")
        cookie = next(c for c in page.context.cookies() if c["name"] == "console_session")
        assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
        assert "ana@example.com" in page.inner_text("header")
        shoot(page, "manual-checks")

        page.click(f"text={order_id}")
        page.wait_for_url(f"{base}/console/tasks/{task_id}")
        assert "MANUAL_CHECK" in page.inner_text("h1")
        assert "manual" in page.inner_text("main").lower()  # the timeline is there
        shoot(page, "task")
        page.check("input[value=positive]")
        assert "no money moves until another person" in page.inner_text("#four-eyes")
        page.fill("textarea[name=reason]", "provider statement shows the payout")
        page.click("button:has-text('Resolve as ana@example.com')")
        page.wait_for_url(f"{base}/console/tasks/{task_id}")  # four-eyes: a proposal
        assert "Waiting for a second person" in page.inner_text("#proposal")
        assert page.locator("button:has-text('Approve as')").count() == 0  # ana: no approver
        shoot(page, "proposal")
        waiting = client.ops.get("/ops/v1/approvals").json()["proposals"]
        proposal_id = next(p["id"] for p in waiting if p["task_id"] == task_id)
        own = client.ops.post(f"/ops/v1/approvals/{proposal_id}/approve", json={})
        assert own.status_code == 403  # and the server refuses her anyway
        assert client.withdrawal(queue_id)["tasks"][0]["funds"] == "FROZEN"  # nothing moved
        page.click("button:has-text('Sign out')")
        page.wait_for_url(f"{base}/console/login")

        page.click("button:has-text('Sign in')")  # bob, an approver
        page.wait_for_url(f"{client.stack.issuer_url}/oauth2/authorize?*")
        page.click("button[name=sub][value=bob]")
        page.wait_for_url(f"{base}/console")
        page.click("a:has-text('Approvals')")
        page.wait_for_url(f"{base}/console/approvals")
        row = page.locator("tr", has_text=order_id)
        assert ana in row.inner_text()
        shoot(page, "approvals")
        row.locator("button:has-text('Approve as bob@example.com')").click()
        page.wait_for_url(f"{base}/console/withdrawals/{queue_id}")

        assert client.wait_final(queue_id)["status"] == "COMPLETED"
        page.reload()
        assert "COMPLETED" in page.inner_text("h1")
        timeline = page.inner_text("main")
        assert "manual_check_proposed" in timeline and ana in timeline
        assert "manual_check_approved" in timeline and bob in timeline
        assert "provider statement shows the payout" in timeline
        shoot(page, "withdrawal")
        page.goto(f"{base}/console/withdrawals?q={order_id}")  # the search finds it too
        assert order_id in page.inner_text("h1")
        page.click("button:has-text('Sign out')")
        page.wait_for_url(f"{base}/console/login")
        page.goto(f"{base}/console")
        assert page.url.endswith("/console/login")  # signed out
        browser.close()
    events = client.events(queue_id)
    resolved = [e for e in events if e["event_type"] == "manual_resolved"]
    assert [(e["actor"], e["payload"]["operator"], e["payload"]["reason"]) for e in resolved] == [
        (bob, ana, "provider statement shows the payout")
    ]


def sign_in(browser: httpx.Client, person: str) -> str:
    """The console's sign-in by hand: to the issuer, its form, back to the callback.
    (httpx keeps no Secure cookie over http, so they are carried here.) The cookie."""
    started = browser.get("/console/sign-in")
    assert started.status_code == 303, started.text
    browser.cookies.set("console_signin", started.cookies["console_signin"], path="/console")
    chose = httpx.post(started.headers["location"], data={"sub": person}, timeout=10)
    signed = browser.get(chose.headers["location"])
    assert signed.status_code == 200, signed.text
    cookie = signed.cookies["console_session"]
    browser.cookies.set("console_session", cookie, path="/console")
    return cookie


def test_nothing_changes_without_a_session_the_csrf_token_or_the_role(
    client: StackClient,
) -> None:
    queue_id, task_id = in_manual_check(client)
    base, resolve = client.stack.api_url, f"/console/tasks/{task_id}/resolve"
    form = {"outcome": "positive", "reason": "r"}
    with httpx.Client(base_url=base, follow_redirects=False) as browser:
        assert browser.get("/console").headers["location"] == "/console/login"
        assert browser.post(resolve, data=form).status_code == 401
        unasked = browser.get("/console/callback", params={"code": "x", "state": "y"})
        assert unasked.status_code == 401 and "console_session" not in unasked.cookies
        cookie = sign_in(browser, "ana")
        assert browser.get("/console").status_code == 200
        assert browser.post(resolve, data=form).status_code == 403  # no CSRF token
        assert browser.post(resolve, data={**form, "csrf": "0" * 64}).status_code == 403
        tampered = cookie.replace(cookie[5], "A" if cookie[5] != "A" else "B", 1)
        browser.cookies.set("console_session", tampered, path="/console")
        assert browser.get("/console").status_code == 303
    with httpx.Client(base_url=base, follow_redirects=False) as browser:
        sign_in(browser, "vic")  # a viewer: sees the task, no button, and is refused
        task_page = browser.get(f"/console/tasks/{task_id}").text
        assert "needs the resolver role" in task_page and "Resolve as" not in task_page
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', task_page)
        assert csrf is not None
        refused = browser.post(resolve, data={**form, "csrf": csrf.group(1)})
        assert refused.status_code == 403 and "resolver role" in refused.text
    assert client.withdrawal(queue_id)["tasks"][0]["status"] == "MANUAL_CHECK"  # unchanged
    resolved = client.ops.post(
        f"/ops/v1/tasks/{task_id}/resolve", json={"outcome": "negative", "reason": "test cleanup"}
    )
    assert resolved.status_code == 200
    wait_until(lambda: client.wait_final(queue_id)["status"] == "FAILED", 30, "the release")


def shoot(page: Any, name: str) -> None:
    if os.environ.get("UPDATE_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS / f"{name}.png")), full_page=True)


def test_the_task_page_shows_the_answers_that_led_to_the_check_and_a_decision_in_progress(
    client: StackClient,
) -> None:
    """The provider's create and status answers are on the task page beside its
    webhooks; after a resolve, until the ledger confirms it, the pages say that the
    decision is being carried out (not a bare MANUAL_CHECK) and refresh themselves."""
    queue_id, task_id = in_manual_check(client)  # never_answers: accepted, then pending
    with httpx.Client(base_url=client.stack.api_url, follow_redirects=False) as browser:
        sign_in(browser, "ana")
        task_page = browser.get(f"/console/tasks/{task_id}").text
        assert "<td>create</td><td>accepted</td>" in task_page, task_page
        assert "<td>status</td><td>pending</td>" in task_page, task_page
        assert "Being carried out" not in task_page and "http-equiv" not in task_page
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', task_page)
        assert csrf is not None
        client.set_ledger_faults(error_rate=1.0)  # the release waits on the ledger
        try:
            form = {"outcome": "negative", "reason": "no payout", "csrf": csrf.group(1)}
            done = browser.post(f"/console/tasks/{task_id}/resolve", data=form)
            assert done.status_code == 303, done.text
            shown = browser.get(done.headers["location"]).text
            assert "MANUAL_CHECK → FAILED <b>(being carried out)</b>" in shown, shown
            assert 'http-equiv="refresh"' in shown
            task_page = browser.get(f"/console/tasks/{task_id}").text
            assert "Being carried out" in task_page and "Resolve as" not in task_page
        finally:
            client.set_ledger_faults()
        assert client.wait_final(queue_id, timeout=90)["status"] == "FAILED"
        shown = browser.get(f"/console/withdrawals/{queue_id}").text
        assert "being carried out" not in shown and "http-equiv" not in shown
