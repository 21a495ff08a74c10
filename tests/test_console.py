"""The support console: a person logs in, finds a withdrawal in manual check,
resolves it with a reason, and sees it finish, in a real browser (Playwright
with Debian's chromium); and nothing changes without the session, with a wrong
token, or without the CSRF token."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.embedded import PROJECT_ROOT
from sandbox.client import StackClient
from sandbox.stack import OPS_TOKEN, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = PROJECT_ROOT / "docs" / "console"  # refreshed with UPDATE_SCREENSHOTS=1


def in_manual_check(client: StackClient) -> tuple[str, str]:
    client.set_provider("sla", behaviour="never_answers")
    queue_id = client.submit(["sla"], order_id=f"console-{os.urandom(3).hex()}").json()["id"]
    client.wait_task_status(queue_id, 0, "MANUAL_CHECK")
    return queue_id, str(client.withdrawal(queue_id)["tasks"][0]["id"])


def test_a_person_resolves_a_manual_check_in_the_browser(client: StackClient) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make setup installs Debian's chromium as root)")
    from playwright.sync_api import sync_playwright

    queue_id, task_id = in_manual_check(client)
    order_id = client.withdrawal(queue_id)["order_id"]
    base = client.stack.api_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/console")
        assert page.url.endswith("/console/login")  # no session: the login form
        shoot(page, "login")
        page.fill("input[name=operator]", "ana")
        page.fill("input[name=token]", OPS_TOKEN)
        page.click("button:has-text('Log in')")
        page.wait_for_url(f"{base}/console")
        cookie = next(c for c in page.context.cookies() if c["name"] == "console_session")
        assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
        shoot(page, "manual-checks")

        page.click(f"text={order_id}")
        page.wait_for_url(f"{base}/console/tasks/{task_id}")
        assert "MANUAL_CHECK" in page.inner_text("h1")
        assert "manual" in page.inner_text("main").lower()  # the timeline is there
        shoot(page, "task")
        page.check("input[value=positive]")
        page.fill("textarea[name=reason]", "provider statement shows the payout")
        page.click("button:has-text('Resolve as ana')")
        page.wait_for_url(f"{base}/console/withdrawals/{queue_id}")

        assert client.wait_final(queue_id)["status"] == "COMPLETED"
        page.reload()
        assert "COMPLETED" in page.inner_text("h1")
        timeline = page.inner_text("main")
        assert "manual_resolved" in timeline and "ops:ana" in timeline
        assert "provider statement shows the payout" in timeline
        shoot(page, "withdrawal")
        page.goto(f"{base}/console/withdrawals?q={order_id}")  # the search finds it too
        assert order_id in page.inner_text("h1")
        browser.close()
    events = client.events(queue_id)
    resolved = [e for e in events if e["event_type"] == "manual_resolved"]
    assert [(e["actor"], e["payload"]["reason"]) for e in resolved] == [
        ("ops:ana", "provider statement shows the payout")
    ]


def test_nothing_changes_without_a_session_a_valid_token_or_the_csrf_token(
    client: StackClient,
) -> None:
    queue_id, task_id = in_manual_check(client)
    base = client.stack.api_url
    form = {"outcome": "positive", "reason": "r"}
    with httpx.Client(base_url=base, follow_redirects=False) as browser:
        assert browser.get("/console").headers["location"] == "/console/login"
        assert browser.post(f"/console/tasks/{task_id}/resolve", data=form).status_code == 401
        wrong = browser.post("/console/login", data={"operator": "eve", "token": "nope"})
        assert wrong.status_code == 401 and "console_session" not in wrong.cookies
        assert browser.get("/console").status_code == 303
        good = browser.post("/console/login", data={"operator": "ana", "token": OPS_TOKEN})
        assert good.status_code == 303
        cookie = good.cookies["console_session"]
        browser.cookies.set("console_session", cookie, path="/console")
        assert browser.get("/console").status_code == 200
        no_csrf = browser.post(f"/console/tasks/{task_id}/resolve", data=form)
        assert no_csrf.status_code == 403
        forged = browser.post(f"/console/tasks/{task_id}/resolve", data={**form, "csrf": "0" * 64})
        assert forged.status_code == 403
        tampered = cookie.replace(cookie[5], "A" if cookie[5] != "A" else "B", 1)
        browser.cookies.set("console_session", tampered, path="/console")
        assert browser.get("/console").status_code == 303
    assert client.withdrawal(queue_id)["tasks"][0]["status"] == "MANUAL_CHECK"  # unchanged
    resolved = client.ops.post(
        f"/ops/v1/tasks/{task_id}/resolve",
        json={"outcome": "negative", "operator": "ana", "reason": "test cleanup"},
    )
    assert resolved.status_code == 200
    wait_until(lambda: client.wait_final(queue_id)["status"] == "FAILED", 30, "the release")


def shoot(page: Any, name: str) -> None:
    if os.environ.get("UPDATE_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS / f"{name}.png")), full_page=True)
