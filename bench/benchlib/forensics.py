"""The runbook's SQL (docs/ops.md), as an operator would run it, timed: for
bench/volume.py.

The queries are read from docs/ops.md when the bench runs, so a query added to the
runbook is measured without touching the bench: every statement of its ```sql blocks
and every `SELECT ...` quoted in its prose. Statements that write (the role grants'
INSERT and DELETE) are listed as skipped. The runbook's placeholders become real
values: 'X' and 'ORDER_ID' an order id, 'TASK_ID' one of its tasks; provider names
('alpha') are the fill's own.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

OPS_MD = Path(__file__).resolve().parents[2] / "docs" / "ops.md"
STATEMENT_TIMEOUT_S = 120
SLOW_S = 20.0  # a query slower than this is timed once, not three times
SMALL_SCAN = 1000  # rows a sequential scan may read and still count as a lookup
# Runbook SELECTs that act rather than look: run by a person on purpose, not timed here.
ACTIONS = ("order_task_events_add_months",)


@dataclass
class Query:
    line: int  # in docs/ops.md
    section: str
    text: str  # as the runbook has it


@dataclass
class Timing:
    query: Query
    sql: str  # with the placeholders filled
    best_ms: float | None = None  # None: skipped or failed
    runs: int = 0
    rows: int = 0
    note: str = ""
    seq_scans: list[str] = field(default_factory=list)  # "relation: rows read"
    plan: list[str] = field(default_factory=list)  # EXPLAIN ANALYZE, condensed

    @property
    def index_only(self) -> bool:
        return not self.seq_scans


def extract(path: Path = OPS_MD) -> list[Query]:
    """Every statement of the runbook's ```sql blocks and every `SELECT ...` in its prose."""
    queries: list[Query] = []
    section, other, start = "", False, 0
    block: list[str] | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if block is not None:  # inside a ```sql block
            if stripped.startswith("```"):
                queries += _statements(block, start, section)
                block = None
            else:
                block.append(line)
        elif other:  # inside another fenced block (its '#' lines are comments)
            other = not stripped.startswith("```")
        elif stripped.startswith("```sql"):
            block, start = [], number + 1
        elif stripped.startswith("```"):
            other = True
        else:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            for quoted in re.findall(r"`(SELECT [^`]+)`", line):
                queries.append(Query(number, section, quoted.rstrip().rstrip(";")))
    return queries


def _statements(lines: list[str], start: int, section: str) -> list[Query]:
    found: list[Query] = []
    current: list[str] = []
    first = start
    for offset, line in enumerate(lines):
        code = re.sub(r"--.*$", "", line).rstrip()  # no '--' inside the runbook's strings
        if not code.strip():
            continue
        if not current:
            first = start + offset
        current.append(code.strip())
        if code.endswith(";"):
            found.append(Query(first, section, " ".join(current)[:-1]))
            current = []
    if current:
        found.append(Query(first, section, " ".join(current)))
    return found


def fill_in(text: str, order_id: str, task_id: str) -> str:
    return (
        text.replace("'ORDER_ID'", f"'{order_id}'")
        .replace("'TASK_ID'", f"'{task_id}'")
        .replace("'X'", f"'{order_id}'")
    )


def _scans(node: dict[str, Any], out: list[str], lines: list[str], depth: int = 0) -> None:
    kind = node["Node Type"]
    loops = node.get("Actual Loops", 1)
    read = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
    target = node.get("Relation Name") or node.get("Function Name") or ""
    index = f" using {node['Index Name']}" if "Index Name" in node else ""
    removed = node.get("Rows Removed by Filter")
    lines.append(
        f"{'  ' * depth}{kind}{' on ' + target if target else ''}{index}"
        f"  (actual {node.get('Actual Total Time', 0):.1f} ms, rows {node.get('Actual Rows', 0)}"
        f" x{loops}{'' if removed is None else f', removed {removed}'})"
    )
    if kind in ("Seq Scan", "Parallel Seq Scan") and read >= SMALL_SCAN:
        out.append(f"{target}: {read:,.0f} rows read")
    for child in node.get("Plans", []):
        _scans(child, out, lines, depth + 1)


def measure(url: str, queries: list[Query], order_id: str, task_id: str) -> list[Timing]:
    """Each SELECT: the best of 3 runs (rows fetched, as psql would), then EXPLAIN
    (ANALYZE, BUFFERS) once, for its sequential scans and a condensed plan."""
    results = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT_S}s'")
        for query in queries:
            timing = Timing(query, fill_in(query.text, order_id, task_id))
            results.append(timing)
            if not timing.sql.lstrip().upper().startswith("SELECT"):
                timing.note = "skipped: it writes"
                continue
            if any(action in timing.sql for action in ACTIONS):
                timing.note = "skipped: an action, not a look"
                continue
            try:
                best = None
                for _ in range(3):
                    started = time.perf_counter()
                    timing.rows = len(conn.execute(timing.sql).fetchall())
                    took = time.perf_counter() - started
                    best = took if best is None else min(best, took)
                    timing.runs += 1
                    if took > SLOW_S:
                        break
                timing.best_ms = None if best is None else best * 1000
                raw = conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + timing.sql
                ).fetchone()
                assert raw is not None
                plan = raw[0] if isinstance(raw[0], list) else json.loads(raw[0])
                _scans(plan[0]["Plan"], timing.seq_scans, timing.plan)
                timing.plan.append(f"Execution Time: {plan[0]['Execution Time']:.1f} ms")
                jit = plan[0].get("JIT", {}).get("Timing", {}).get("Total")
                if jit is not None:  # compiling, when the planner expects a big query
                    timing.plan.append(f"JIT: {jit:.1f} ms of it")
            except psycopg.Error as exc:
                timing.note = f"failed: {str(exc).strip().splitlines()[0]}"
    return results
