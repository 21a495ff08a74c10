"""deploy/: the alert rules pass promtool (check and unit tests), and the dashboard
and the rules query only metrics the service exports (a live /metrics)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import httpx
import pytest
import yaml

from devstack.embedded import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "payment-service.json"
PROMQL_WORDS = {
    "sum",
    "by",
    "without",
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "histogram_quantile",
    "or",
    "and",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "max",
    "min",
    "avg",
    "count",
    "abs",
    "absent",
    "le",
    "bool",
    "offset",
    "humanizeDuration",
    "time",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (make setup installs Debian's prometheus as root)")
    return found


def test_the_alert_rules_pass_promtool_check() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_the_alert_rules_pass_their_unit_tests() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_runbook_section_in_the_ops_docs() -> None:
    ops = (PROJECT_ROOT / "docs" / "ops.md").read_text()
    anchors = {_anchor(line) for line in ops.splitlines() if line.startswith("#")}
    for rule in _alerts():
        runbook = rule["annotations"]["runbook_url"]
        assert runbook.startswith("docs/ops.md#"), rule["alert"]
        assert runbook.split("#", 1)[1] in anchors, (rule["alert"], runbook)


def test_the_dashboard_and_the_rules_query_only_exported_metrics(stack: Any) -> None:
    exported = _exported(stack)
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    exprs += [rule["expr"] for rule in _rules()]
    queried = set().union(*(_metric_names(e) for e in exprs))
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    assert len(queried) >= 15
    assert queried <= exported | recorded, sorted(queried - exported - recorded)


def test_the_metric_name_parser_finds_names_and_nothing_else() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, state) (rate(task_time_in_state_seconds_bucket"
        '{state="x"}[15m]))) / ignoring(a) dlq_size or 0 * outbox_lag_seconds > 2'
    )
    assert _metric_names(expr) == {
        "task_time_in_state_seconds_bucket",
        "dlq_size",
        "outbox_lag_seconds",
    }


def _rules() -> list[dict[str, Any]]:
    """Alerts and recording rules."""
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


def _metric_names(expr: str) -> set[str]:
    bare = re.sub(r"#[^\n]*", "", expr)  # comments
    bare = re.sub(r"\{[^}]*\}", "", bare)  # label matchers
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return {n for n in names if n not in PROMQL_WORDS}


def _exported(stack: Any) -> set[str]:
    """Every sample name any process of the stack exposes, histograms' series included."""
    names: set[str] = set()
    for url in stack.metrics_urls():
        for line in httpx.get(url, timeout=5).text.splitlines():
            match = re.match(r"# TYPE (\S+) (\S+)", line)
            if match is None:
                continue
            name, kind = match.groups()
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            elif kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
            else:
                names.add(name)
    return names


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_the_api_shows_every_processes_outcomes_from_sql(client: Any) -> None:
    """With steps in workers, outcome counters live in the workers; the API's
    `withdrawals` gauge counts them from SQL, so one /metrics shows them all."""
    queue_id = client.submit(["alpha"]).json()["id"]
    assert client.wait_final(queue_id)["status"] == "COMPLETED"
    text = httpx.get(f"{client.stack.api_url}/metrics", timeout=5).text
    completed = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('withdrawals{status="COMPLETED"}')
    ]
    assert completed and completed[0] >= 1
