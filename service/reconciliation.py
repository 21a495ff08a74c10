"""Continuous reconciliation with cascade-core's ledger (docs/ops.md, "Alert:
PaymentLedgerDrift").

A run reads the ledger's holds a page at a time (activities/ledger.py), so a
process never holds more than one page of them, whatever the ledger's size. Each
page is written into `ledger_holds` in one short transaction: the holds that
changed are upserted, and those of the page's key range that the ledger no longer
has are deleted (the pages come in byte order of key). Then one transaction
compares, in SQL, the whole snapshot with the tasks (`v_ledger_drift`): each
disagreement is a finding in `ledger_findings`, opened the first time a run sees
it and resolved by the first later run that sees it agree.

A task that moved after the run began may be ahead of the page the run read, and
one with a ledger call in flight may legitimately differ: the run neither opens
nor resolves a finding about either, and a later run judges them.

The workers' `checks` job defers a `reconcile` job once the last run began
RECONCILE_EVERY_S ago; `python -m service.ops reconcile` runs one itself. An
advisory lock lets one run at a time go on, in any process.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import procrastinate
import psycopg
from procrastinate.exceptions import AlreadyEnqueued
from psycopg.rows import dict_row

from activities.http import OutboundHttp
from activities.ledger import HoldPage, LedgerClient, LedgerRefused
from activities.outcomes import AmbiguousOutcome
from engine.contracts import ShellJob
from engine.journal import Conn
from engine.steps import Runtime
from service import reconciliation_sql as q
from service.settings import Settings

log = logging.getLogger("payment.reconcile")

RECONCILE_LOCK = 7_303_010  # one run at a time, in any process (a session's advisory lock)
JOB = "reconcile"


class ReconcileFailed(Exception):
    """The run could not read the ledger, or store what it read: nothing was judged."""


@dataclass(frozen=True)
class RunResult:
    run_id: int
    holds: int  # read from the ledger
    open_findings: int  # after the run


class Reconciler:
    def __init__(self, ledger: LedgerClient, page_size: int, conninfo: str) -> None:
        self._ledger = ledger
        self._page_size = page_size
        self._conninfo = conninfo  # the database's (the lock's own connection)

    async def run(self, wait: bool = False) -> RunResult | None:
        """One run; None when another is going on (`wait`: wait for it, then run).
        The lock is its own connection's, closed at the end however the run ends: a
        pooled one could go back to the pool still holding it."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, row_factory=dict_row
            )
            async with conn:
                lock = q.LOCK_WAIT if wait else q.LOCK_TRY
                row = await (await conn.execute(lock, (RECONCILE_LOCK,))).fetchone()
                if row is None or row["locked"] is False:
                    return None
                return await self._locked_run(conn)
        except psycopg.Error as exc:  # before the run began, or after it was recorded
            raise ReconcileFailed(f"database: {type(exc).__name__}: {exc}") from exc

    async def job(self, runtime: Runtime, **_: object) -> None:
        """The `reconcile` job: a failed run is recorded and logged, never retried:
        the next one is due a period later anyway."""
        try:
            result = await self.run()
        except ReconcileFailed as exc:
            log.warning("ledger reconciliation failed: %s", exc)
            return
        if result is not None:
            log.info(
                "ledger reconciliation: %d holds, %d findings open",
                result.holds,
                result.open_findings,
            )

    async def _locked_run(self, conn: Conn) -> RunResult:
        started = await (await conn.execute(q.START_RUN)).fetchone()
        assert started is not None
        run_id, started_at = started["id"], started["started_at"]
        holds = 0
        try:
            holds = await self._sync(conn)
            open_findings = await _compare(conn, started_at)
        except (AmbiguousOutcome, LedgerRefused, ReconcileFailed, psycopg.Error) as exc:
            with contextlib.suppress(psycopg.Error):  # the database may be what failed
                await conn.execute(q.FINISH_RUN, (holds, None, f"{exc!r}"[:500], run_id))
            raise ReconcileFailed(f"{type(exc).__name__}: {exc}") from exc
        await conn.execute(q.FINISH_RUN, (holds, open_findings, None, run_id))
        await conn.execute(q.PRUNE_RUNS)
        return RunResult(run_id, holds, open_findings)

    async def _sync(self, conn: Conn) -> int:
        """Bring ledger_holds up to the ledger, a page at a time; the holds read."""
        after: str | None = None  # the cursor the ledger gave
        done_up_to: str | None = None  # the last key written: the next page's range starts here
        read = 0
        while True:
            page = await self._ledger.hold_page(after, self._page_size)
            _check_page(page, done_up_to, after)
            async with conn.transaction():
                await _store_page(conn, page, done_up_to)
            read += len(page.holds)
            if page.next is None:
                return read
            after, done_up_to = page.next, page.holds[-1].key


def _check_page(page: HoldPage, after_key: str | None, cursor: str | None) -> None:
    """A page that would not move the listing on, or whose keys are out of byte
    order, stops the run: the deletion of a page's range is only right in byte order
    (a Python str compares by code point, which is UTF-8's byte order)."""
    if page.next is not None and (not page.holds or page.next == cursor):
        raise ReconcileFailed("the ledger's listing gave a next page, and no progress")
    keys = [hold.key for hold in page.holds]
    first = [after_key] if after_key is not None else []
    previous = [*first, *keys]
    if any(a >= b for a, b in itertools.pairwise(previous)):
        raise ReconcileFailed("the ledger listed holds out of byte order of key")


async def _store_page(conn: Conn, page: HoldPage, after_key: str | None) -> None:
    """Upsert the page's holds that changed; delete the holds of its key range that
    the ledger no longer listed (the last page's range runs to the end)."""
    holds = page.holds
    if holds:
        columns = [
            [h.key for h in holds],
            [h.provider for h in holds],
            [h.currency for h in holds],
            [h.amount for h in holds],
            [h.status for h in holds],
            [h.order_id for h in holds],
        ]
        await conn.execute(q.UPSERT_HOLDS, columns)
    upto = holds[-1].key if page.next is not None else None
    bounds: dict[str, Any] = {"after": after_key, "upto": upto, "keys": [h.key for h in holds]}
    await conn.execute(q.delete_gone(after_key is not None, upto is not None), bounds)


async def _compare(conn: Conn, started_at: datetime) -> int:
    """Open or refresh a finding for each disagreement, resolve the findings this
    run saw agree; the findings left open."""
    async with conn.transaction():
        await conn.execute(q.OPEN_FINDINGS, {"started": started_at})
        await conn.execute(q.RESOLVE_FINDINGS, {"started": started_at})
        row = await (await conn.execute(q.COUNT_OPEN)).fetchone()
    assert row is not None
    return int(row["n"])


async def open_findings(conn: Conn) -> list[dict[str, Any]]:
    """What `service.ops reconcile` prints: each open finding, by key."""
    return await (await conn.execute(q.OPEN_FINDINGS_LIST)).fetchall()


def enabled(settings: Settings) -> bool:
    """The periodic run needs the ledger's token, and a period."""
    return settings.reconcile_every_s > 0 and bool(settings.ledger_token.get_secret_value())


def reconciler_for(settings: Settings, outbound: OutboundHttp) -> Reconciler:
    token = settings.ledger_token.get_secret_value()
    ledger = LedgerClient(outbound, settings.ledger_url, token)
    return Reconciler(ledger, settings.reconcile_page_size, settings.database_url)


def reconcile_jobs(settings: Settings, outbound: OutboundHttp) -> dict[str, ShellJob]:
    """The `reconcile` job, for build_app's shell jobs (none when it is off)."""
    if not enabled(settings):
        return {}
    return {JOB: ShellJob(JOB, reconciler_for(settings, outbound).job)}


Checks = Callable[[Conn], Awaitable[None]]


def when_due(checks: Checks, app: procrastinate.App, settings: Settings) -> Checks:
    """The workers' periodic checks, then a `reconcile` job deferred once the last run
    began RECONCILE_EVERY_S ago (the queueing lock keeps one waiting at most)."""
    if not enabled(settings):
        return checks
    every_s = settings.reconcile_every_s

    async def checks_then_reconcile(conn: Conn) -> None:
        await checks(conn)
        due = await (await conn.execute(q.DUE, (every_s,))).fetchone()
        if due is not None and due["due"]:
            with contextlib.suppress(AlreadyEnqueued):
                await app.configure_task(JOB, queueing_lock=JOB).defer_async()

    return checks_then_reconcile
