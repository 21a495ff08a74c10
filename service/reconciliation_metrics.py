"""Reconciliation's gauges, read from SQL at scrape time (service/metrics_api.py):
the runs happen in whichever worker holds the lock, so no process's own counters
could say what the deployment's reconciliation found."""

from __future__ import annotations

from prometheus_client import Gauge

from engine.journal import Conn
from service import reconciliation_sql as q
from service.reconciliation import enabled
from service.settings import Settings

KINDS = ("unknown_hold", "missing_hold", "status_mismatch")  # as ledger_findings allows

DRIFT = Gauge(
    "ledger_drift_holds",
    "Open reconciliation findings (holds where the ledger and the tasks disagree), by kind",
    ["kind"],
)
LAST_RUN = Gauge(
    "ledger_reconcile_last_run_timestamp_seconds",
    "When the last reconciliation run that read every hold ended (0: none yet)",
)
LAST_CLEAN = Gauge(
    "ledger_reconcile_last_clean_timestamp_seconds",
    "When the last reconciliation run that left no finding open ended (0: none yet)",
)
PERIOD = Gauge(
    "ledger_reconcile_period_seconds",
    "RECONCILE_EVERY_S as this process has it; 0: the workers do not reconcile",
)


async def export(conn: Conn, settings: Settings) -> None:
    by_kind = {r["kind"]: r["n"] for r in await (await conn.execute(q.OPEN_BY_KIND)).fetchall()}
    runs = await (await conn.execute(q.LAST_RUNS)).fetchone()
    assert runs is not None
    for kind in KINDS:  # every kind's series, at 0 when none is open
        DRIFT.labels(kind).set(by_kind.get(kind, 0))
    LAST_RUN.set(float(runs["last_run"]))
    LAST_CLEAN.set(float(runs["last_clean"]))
    PERIOD.set(settings.reconcile_every_s if enabled(settings) else 0)
