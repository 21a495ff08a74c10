"""The console's live configuration page (service/console_config.py): everyone
signed in sees the rollout and the providers in force, credentials as
fingerprints only; an admin changes them with a reason and the history names
them; a viewer's change, an invalid one and a stale one change nothing."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from sandbox.client import StackClient
from tests.test_console import sign_in

PAGE = "/console/config"


def in_force(client: StackClient) -> dict[str, Any]:
    answer = client.person("vic").get("/ops/v1/config")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def versions(client: StackClient) -> dict[str, int]:
    return {name: shown["version"] for name, shown in in_force(client).items()}


@pytest.fixture
def restored(client: StackClient) -> Iterator[dict[str, Any]]:
    """Both documents as they were; put back after the test (the stack is shared)."""
    before = in_force(client)
    yield before
    now = in_force(client)
    if now["rollout"]["body"] != before["rollout"]["body"]:
        body = {"config": before["rollout"]["body"], "reason": "test over: as before"}
        assert client.admin.put("/ops/v1/config/rollout", json=body).status_code == 200
    for name, settings in before["providers"]["body"].items():
        if now["providers"]["body"][name] != settings:
            kept = {k: v for k, v in settings.items() if k not in ("api_key", "webhook_secrets")}
            body = {"settings": kept, "reason": "test over: as before"}
            answer = client.admin.put(f"/ops/v1/config/providers/{name}", json=body)
            assert answer.status_code == 200, answer.text


@contextlib.contextmanager
def signed_in(client: StackClient, person: str) -> Iterator[tuple[httpx.Client, str]]:
    """A console session for `person` and its CSRF token."""
    with httpx.Client(base_url=client.stack.api_url, follow_redirects=False) as browser:
        sign_in(browser, person)
        shown = browser.get(PAGE)
        assert shown.status_code == 200, shown.text
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', shown.text)
        assert found is not None
        yield browser, found.group(1)


def test_a_viewer_sees_the_configuration_without_secrets(client: StackClient) -> None:
    with signed_in(client, "vic") as (browser, _):
        shown = browser.get(PAGE).text
    for secret in client.stack.secrets.values():
        assert secret not in shown
    assert "sk_test_" not in shown and not re.search(r"whsec_[\w-]{6}", shown)
    assert 'href="/console/config"' in shown  # in the navigation
    assert re.search(r"<code>sha256:[0-9a-f]{12}</code>", shown)  # fingerprints
    assert 'id="percent"' in shown and "Rollout history" in shown and "Providers history" in shown
    assert "Changes need the admin role" in shown and "<textarea" not in shown  # no forms


def test_a_viewers_change_is_refused(client: StackClient) -> None:
    before = versions(client)
    with signed_in(client, "vic") as (browser, csrf):
        form = {"csrf": csrf, "cascade_percent": "0", "reason": "not mine to change"}
        answer = browser.post(f"{PAGE}/rollout", data=form)
    assert answer.status_code == 403 and "needs the admin role" in answer.text
    assert versions(client) == before


def test_an_admin_changes_the_percent_and_the_history_names_them(
    client: StackClient, restored: dict[str, Any]
) -> None:
    rollout = restored["rollout"]
    percent = 37 if rollout["body"]["cascade_percent"] != 37 else 38
    with signed_in(client, "ada") as (browser, csrf):
        form = {
            "csrf": csrf,
            "expected": str(rollout["version"]),
            "cascade_percent": str(percent),
            "health_routing": "on" if rollout["body"]["health_routing"] else "",
            "reason": "console test: a smaller cohort",
        }
        answer = browser.post(f"{PAGE}/rollout", data=form)
        assert answer.status_code == 303, answer.text
        shown = browser.get(PAGE).text
    now = in_force(client)["rollout"]
    assert now["version"] == rollout["version"] + 1 and "ada@example.com" in now["changed_by"]
    assert now["body"] == {**rollout["body"], "cascade_percent": percent}
    assert f'<td id="percent">{percent}%</td>' in shown
    history = shown.split("Rollout history")[1]
    newest = history.split("<tr>")[2]  # the header's row, then the newest version's
    assert "ada@example.com" in newest and "console test: a smaller cohort" in newest
    old = rollout["body"]["cascade_percent"]
    assert f"<code>cascade_percent</code>: <code>{old}</code> → <code>{percent}</code>" in newest


def test_an_invalid_or_stale_change_is_refused_and_the_version_is_unchanged(
    client: StackClient,
) -> None:
    before = versions(client)
    rollout, providers = str(before["rollout"]), str(before["providers"])
    gate = {"expected": rollout, "cascade_percent": "150", "reason": "too many"}
    refusals = [
        ("/rollout", gate, 422, "cascade_percent"),
        ("/rollout", {**gate, "cascade_percent": "50", "reason": ""}, 422, "a reason"),
        ("/rollout", {**gate, "cascade_percent": "50", "expected": "0"}, 409, "meanwhile"),
        ("/merchants", {**gate, "merchant": "m 1", "policy": "cascade"}, 422, "merchant"),
        ("/restore", {**gate, "cohort": "cascade"}, 422, "not moved back"),
        ("/providers/alpha", {**gate, "expected": providers, "settings": "{"}, 422, "not JSON"),
        ("/providers/alpha", {**gate, "settings": "{}", "expected": "0"}, 409, "meanwhile"),
    ]
    with signed_in(client, "ada") as (browser, csrf):
        for path, form, status, why in refusals:
            answer = browser.post(f"{PAGE}{path}", data={**form, "csrf": csrf})
            assert answer.status_code == status, (path, answer.text)
            assert why in answer.text and 'id="error"' in answer.text, (path, why)
            assert 'id="rollout"' in answer.text  # the page itself, re-rendered
    assert versions(client) == before


def test_a_provider_edit_keeps_the_credentials_and_a_fingerprint_stands_for_its_secret(
    client: StackClient, restored: dict[str, Any]
) -> None:
    shown = restored["providers"]
    alpha = shown["body"]["alpha"]
    settings = {k: v for k, v in alpha.items() if k not in ("api_key", "webhook_secrets")}
    unknown = {**settings, "webhook_secrets": ["sha256:000000000000"]}
    with signed_in(client, "ada") as (browser, csrf):
        form = {"csrf": csrf, "expected": str(shown["version"]), "reason": "console test"}
        answer = browser.post(
            f"{PAGE}/providers/alpha", data={**form, "settings": json.dumps(unknown)}
        )
        assert answer.status_code == 422 and "fingerprint of no credential" in answer.text
        slower = {**settings, "timeout_s": alpha["timeout_s"] + 1}
        kept = {**slower, "webhook_secrets": alpha["webhook_secrets"]}  # as fingerprints
        answer = browser.post(
            f"{PAGE}/providers/alpha", data={**form, "settings": json.dumps(kept)}
        )
        assert answer.status_code == 303, answer.text
    now = in_force(client)["providers"]
    assert now["version"] == shown["version"] + 1
    assert now["body"]["alpha"] == {**alpha, "timeout_s": alpha["timeout_s"] + 1}
    with psycopg.connect(client.stack.database_url) as conn:
        row = conn.execute(
            "SELECT body->'alpha'->'webhook_secrets' FROM live_config"
            " WHERE name = 'providers' ORDER BY version DESC LIMIT 1"
        ).fetchone()
    assert row is not None and row[0] == [client.stack.secrets["alpha"]]  # the secret itself
