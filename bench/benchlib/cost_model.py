"""The cost model of a withdrawal: py-spy samples and pg_stat_statements split by kind.

Python: each sample (py-spy's raw format, full file names) goes to the first
frame, walking from the innermost outwards, whose file names a kind. The
standard library (json, asyncio, hmac, ...) names none: its time goes to the
code that called it, so the JSON of an HTTP body counts as HTTP and the JSON
of an audit row as the engine. A sample that reaches the outermost frame
undecided is the event loop's own (uvloop, selectors, task switching).

py-spy runs with `--gil` (samples of the thread that holds the GIL): on a
loaded machine a process preempted inside a send() to PostgreSQL or in the
loop's poll shows as busy there without using the CPU.

PostgreSQL: each statement goes to the first class whose pattern it matches,
in the order of STATEMENT_CLASSES. Execution time includes waits: the backends'
wait events are sampled (`WaitSampler`), and the time spent waiting for row
locks (the transition's lock statement, behind another transaction of the same
withdrawal) is taken off the transitions before the server's measured CPU is
shared out in proportion to the rest.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# (kind, fragments of a file's path); the first frame, innermost out, that matches decides.
PYTHON_KINDS = (
    (
        "logging + metrics",
        (
            "/logging/",
            "prometheus_client/",
            "/engine/logs.py",
            "/engine/metrics.py",
            "/engine/tracing.py",
            "/activities/metrics.py",
            "_metrics.py",
            "opentelemetry/",
        ),
    ),
    ("relay: outbox to NATS", ("/nats/", "/activities/outbox_relay.py", "/relay_publish.py")),
    ("psycopg (the engine's statements)", ("/psycopg/", "/psycopg_pool/", "/psycopg_binary/")),
    (
        "HTTP: inbound, outbound, JSON, signatures",
        (
            "/aiohttp/",
            "/uvicorn/",
            "/starlette/",
            "/httptools/",
            "/h11/",
            "/multidict/",
            "/yarl/",
            "/pydantic/",
            "/pydantic_core/",
            "/activities/http.py",
            "/activities/standard_webhooks.py",
            "/activities/strict_json.py",
            "/activities/providers.py",
            "/activities/provider_adapters.py",
            "/activities/ledger.py",
            "/activities/notifier.py",
            "/service/api.py",
            "/service/edge.py",
            "/service/schemas.py",
            "/service/models.py",
        ),
    ),
    (
        "engine: transitions, scheduling",
        ("/engine/", "/workflows/", "/procrastinate/", "/activities/", "/service/", "/server.py"),
    ),
)
LOOP = "event loop and the rest"

# (class, pattern on the lower-cased statement); the first that matches decides.
STATEMENT_CLASSES = (
    ("commit (WAL flush)", r"^\s*(commit|begin)"),
    ("relay", r"(from|update|delete from)\s+outbox\b"),
    ("outbox + audit", r"insert into outbox\b"),  # one statement writes both rows
    ("audit", r"order_task_events"),
    ("timers", r"\btimers\b"),
    ("outcomes", r"provider_outcomes|settle_slo_results|provider_circuit"),
    ("webhooks", r"webhook_inbox|webhook_limits"),
    ("transitions", r"order_tasks|order_queues"),
    ("procrastinate", r"procrastinate"),
)


def python_split(raw: Path) -> collections.Counter[str]:
    """Samples per kind of a py-spy raw profile (`--format raw --full-filenames`)."""
    kinds: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        kinds[_kind(stack.split(";"))] += int(count)
    return kinds


def _kind(frames: list[str]) -> str:
    for frame in reversed(frames):
        path = frame.rpartition("(")[2]
        for kind, fragments in PYTHON_KINDS:
            if any(f in path for f in fragments):
                return kind
    return LOOP


def statement_class(query: str) -> str:
    text = " ".join(query.lower().split())
    for name, pattern in STATEMENT_CLASSES:
        if re.search(pattern, text):
            return name
    return "other"


def reset_statements(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")


def statements(url: str) -> list[tuple[str, int, float]]:
    """(query, calls, total execution ms) of this database since the reset."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls, total_exec_time + total_plan_time FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    return [(str(q), int(c), float(t)) for q, c, t in rows]


class WaitSampler:
    """Samples what the backends of a database wait on, every `every` seconds, from
    the server's `postgres` database (not to count in the one measured)."""

    def __init__(self, url: str, every: float = 0.01) -> None:
        self.url, self.every = make_conninfo(url, dbname="postgres"), every
        self.database = conninfo_to_dict(url)["dbname"]
        self.waits: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                for kind, event in conn.execute(
                    "SELECT wait_event_type, wait_event FROM pg_stat_activity"
                    " WHERE datname = %s AND state = 'active' AND wait_event IS NOT NULL",
                    (self.database,),
                ).fetchall():
                    self.waits[f"{kind}:{event}"] += 1
                time.sleep(self.every)

    def ms(self, prefix: str) -> float:
        return 1000 * self.every * sum(n for k, n in self.waits.items() if k.startswith(prefix))


def print_sql(
    rows: list[tuple[str, int, float]], withdrawals: int, server_ms: float, lock_ms: float
) -> None:
    """Per class: calls and execution ms per withdrawal, and the measured server CPU
    shared out in proportion (`server_ms`: the backends' CPU per withdrawal) once
    `lock_ms` (row-lock waits, all) is taken off the transitions."""
    calls: collections.Counter[str] = collections.Counter()
    ms: dict[str, float] = collections.defaultdict(float)
    for query, n, total in rows:
        calls[statement_class(query)] += n
        ms[statement_class(query)] += total
    working = dict(ms)
    working["transitions"] = max(0.0, working.get("transitions", 0.0) - lock_ms)
    whole = sum(working.values()) or 1.0
    print(f"\n== PostgreSQL per withdrawal ({withdrawals}): {server_ms:.2f} ms of server CPU")
    print(
        f"   row-lock waits {lock_ms / withdrawals:.2f} ms per withdrawal (taken off transitions)"
    )
    print(f"   {'class':<22}{'calls':>8}{'exec ms':>9}{'share':>8}{'CPU ms':>8}")
    for name, total in sorted(ms.items(), key=lambda kv: -kv[1]):
        share = working[name] / whole
        print(
            f"   {name:<22}{calls[name] / withdrawals:8.1f}{total / withdrawals:9.3f}"
            f"{100 * share:7.1f}%{share * server_ms:8.2f}"
        )
    print("   heaviest statements (exec ms per withdrawal, calls per withdrawal):")
    for query, n, total in sorted(rows, key=lambda r: -r[2])[:12]:
        text = " ".join(query.split())[:110]
        print(f"   {total / withdrawals:7.3f} {n / withdrawals:5.1f}  {text}")


def print_python(name: str, kinds: collections.Counter[str], cpu_ms: float) -> None:
    """`cpu_ms`: the process's CPU per withdrawal, measured; shared out by samples."""
    total = sum(kinds.values()) or 1
    print(f"\n== {name}: {cpu_ms:.2f} ms of CPU per withdrawal, {total} samples")
    for kind, n in kinds.most_common():
        print(f"   {kind:<44}{100 * n / total:6.1f}%{cpu_ms * n / total:8.2f} ms")
