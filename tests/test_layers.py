"""The layers hold: workflows ← engine ← activities ← service ← entry points, and
engine/ names no withdrawal (import-rule and layer tests).

A module may import its own layer and those below it, never one above.
devstack/ (the embedded PostgreSQL and NATS of local development) imports none of
ours, and only the service's command lines and what sits above use it. The
engine's code (docstrings and comments aside) names no withdrawal table, no
withdrawal, provider or ledger: it reaches its tables through the definition's
Storage (workflows/core.py).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first; a module may import from its own layer or any earlier one.
LAYERS = ("workflows", "engine", "activities", "service")
TOP = ("server", "worker", "sandbox", "bench", "devstack", "tests")
# Beside the layers: what a layer may import besides the layers below it.
BESIDE: dict[str, tuple[str, ...]] = {"service": ("devstack",), "devstack": ()}
OURS = (*LAYERS, *TOP)
ENGINE_MUST_NOT_NAME = re.compile(
    r"order_queues|order_tasks|order_task_events|webhook_inbox|withdrawal|provider|ledger",
    re.IGNORECASE,
)
# Words of other vocabularies that contain ours (OpenTelemetry's tracer provider).
ALLOWED = re.compile(r"TracerProvider|tracer_provider")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import of ours, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return [(line, top) for line, top in found if top in OURS]


def _layer_violations(layer: str) -> list[str]:
    below = LAYERS[: LAYERS.index(layer) + 1] if layer in LAYERS else ()
    allowed = {*below, *BESIDE.get(layer, ()), layer}
    return [
        f"{path.relative_to(ROOT)}:{line} imports {top}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for line, top in _imports(path)
        if top not in allowed
    ]


@pytest.mark.parametrize("layer", [*LAYERS, "devstack"])
def test_import_rule_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    assert _layer_violations(layer) == []


def test_import_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: an engine module importing the service is reported."""
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from service import wiring\n")
    assert _imports(module) == [(2, "service")]


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def _withdrawal_words(source: str) -> list[str]:
    """Code tokens (names, strings; not comments or docstrings) naming a withdrawal."""
    docstrings = _docstring_lines(ast.parse(source))
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            continue
        if token.type == tokenize.STRING and token.start[0] in docstrings:
            continue
        text = ALLOWED.sub("", token.string)
        if ENGINE_MUST_NOT_NAME.search(text):
            found.append(f"{token.start[0]}: {token.string[:60]}")
    return found


def test_layer_engine_names_no_withdrawal_table_provider_or_ledger() -> None:
    named = {
        str(path.relative_to(ROOT)): words
        for path in sorted((ROOT / "engine").glob("*.py"))
        if (words := _withdrawal_words(path.read_text()))
    }
    assert named == {}


def test_layer_scan_sees_code_but_not_docstrings_or_comments() -> None:
    source = '"""About withdrawals."""\n# a ledger\nTABLE = "order_tasks"\n'
    assert _withdrawal_words(source) == ['3: "order_tasks"']


def test_layer_rows_are_typed_in_engine_and_activities() -> None:
    """Untyped rows (`dict[str, Any]`) only where the edges are named: engine/rows.py's
    DbRow (a row as psycopg returns it) and JsonObject (a JSON body or arguments)."""
    untyped = re.compile(r"(dict|Mapping)\[str, Any\]")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for layer in ("engine", "activities")
        for path in sorted((ROOT / layer).glob("*.py"))
        if path.name != "rows.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if untyped.search(line)
    ]
    assert found == []
