"""`python -m service.ops archive ...`: the audit trail's partitions and its archive
(service/history.py, service/archive.py; docs/ops.md "Retention and the archive").

archive show ORDER   an archived withdrawal's timeline, as `timeline` prints a hot one
                     (with any event written after its month left: they stay hot)
archive status       each partition: its range, size, and whether it is due, waits
                     (why, for which withdrawals) or was archived
archive run          archive the months due now (the workers do it every hour)
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from service import archive_files as files
from service.archive import TABLE_DIR, Archiver
from service.history import Blocker, blockers, partitions
from service.settings import Settings
from service.wiring import Services
from service.withdrawals import find_queue_id

Rows = list[dict[str, Any]]


def add_parser(sub: Any) -> None:
    archive = sub.add_parser("archive", help="the audit trail's partitions and archive")
    commands = archive.add_subparsers(dest="archive_command", required=True)
    commands.add_parser("show").add_argument("order")
    commands.add_parser("status")
    commands.add_parser("run")


async def run(svc: Services, args: argparse.Namespace) -> Rows:
    match args.archive_command:
        case "show":
            async with svc.pool.connection() as conn:
                queue_id = await find_queue_id(conn, args.order)
            if queue_id is None:
                raise SystemExit(f"no withdrawal {args.order!r}")
            return await asyncio.to_thread(show, svc.settings, UUID(str(queue_id)))
        case "status":
            return await asyncio.to_thread(status, svc.settings)
        case "run":
            return await asyncio.to_thread(run_now, svc.settings)
    raise ValueError(f"unknown archive command {args.archive_command!r}")


# Where a withdrawal's month went: the catalog's row for the range its submission
# falls in (the withdrawal's own row stays hot: docs/ops.md says why).
_WHERE = """
SELECT a.partition, a.state, a.path, a.manifest_sha256 FROM event_archives a
JOIN order_queues q ON q.created_at >= coalesce(a.lower, '-infinity') AND q.created_at < a.upper
WHERE q.id = %s
"""
# A month detached and not yet archived (minutes, while its files are written): its
# table is still there, and the withdrawal's queue and task rows are the hot ones.
_DETACHED = {
    "events": "SELECT * FROM {partition} WHERE queue_id = %(queue_id)s",
    "queues": "SELECT * FROM order_queues WHERE id = %(queue_id)s",
    "tasks": "SELECT * FROM order_tasks WHERE queue_id = %(queue_id)s",
}
# The same shape as `timeline`: the archived rows, then any written since (hot).
_TIMELINE = """
SELECT e.id AS event_id, e.occurred_at, t.provider, e.from_state, e.to_state, e.event_type,
       e.actor
FROM archived_events e LEFT JOIN archived_tasks t ON t.id = e.task_id
WHERE e.queue_id = %(queue_id)s
UNION ALL
SELECT event_id, occurred_at, provider, from_state, to_state, event_type, actor
FROM v_withdrawal_timeline WHERE queue_id = %(queue_id)s
ORDER BY event_id
"""


def show(settings: Settings, queue_id: UUID) -> Rows:
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        if not load(conn, settings.archive_dir, queue_id):
            raise SystemExit(f"withdrawal {queue_id} is not archived: see `timeline`")
        rows: Rows = conn.execute(_TIMELINE, {"queue_id": queue_id}).fetchall()
        conn.rollback()  # the temporary tables go
    return rows


def load(conn: psycopg.Connection[Any], root: Path | None, queue_id: UUID) -> bool:
    """The archived rows of the block that holds the withdrawal, in temporary tables
    `archived_events`, `archived_queues` and `archived_tasks` (gone when the caller's
    transaction ends); False when its month is not archived."""
    found = conn.execute(_WHERE, (queue_id,)).fetchone()
    if found is None:
        return False
    name, state, path, sha = (found[k] for k in ("partition", "state", "path", "manifest_sha256"))
    if state == "detached":
        for file, rows in _DETACHED.items():
            select = sql.SQL(rows).format(partition=sql.Identifier(name))
            create = sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}")
            conn.execute(
                create.format(sql.Identifier(f"archived_{file}"), select), {"queue_id": queue_id}
            )
        return True
    directory = root / TABLE_DIR / name if root is not None else Path(path)
    manifest = files.read_manifest(directory, sha)
    block = files.read_block(directory, queue_id)
    for file in files.FILES:
        table = sql.Identifier(f"archived_{file}")
        # The types are the manifest's, and the manifest is the one the catalog recorded.
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
            for c, t in manifest.columns[file]
        )
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(table, columns))
        copy_in = sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(table)
        if block is not None:
            with conn.cursor() as cur, cur.copy(copy_in) as copy:
                copy.write(block[file])
    return True


def status(settings: Settings) -> Rows:
    """Each partition attached, whether it is due and what keeps it; then each archived."""
    rows: Rows = []
    retention = timedelta(days=settings.retention_days)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        due = {p.name for p in Archiver(settings.database_url, Path(), retention).due(conn)}
        for p in partitions(conn):
            kept = [_why(b) for b in blockers(conn, p)] if p.name in due else []
            state = "waits" if kept else "due" if p.name in due else "hot"
            rows.append(_row(p.name, p.lower, p.upper, p.bytes, state, "; ".join(kept)))
        archived = conn.execute(_ARCHIVED).fetchall()
    for name, lower, upper, state, events, withdrawals in archived:
        what = f"{events} events, {withdrawals} withdrawals" if state == "archived" else ""
        rows.append(_row(name, lower, upper, None, state, what))
    return rows


_ARCHIVED = (
    "SELECT partition, lower, upper, state, events, withdrawals FROM event_archives ORDER BY upper"
)


def _row(
    name: str, lower: Any, upper: Any, size: int | None, state: str, why: str
) -> dict[str, Any]:
    return {
        "partition": name,
        "from": lower,
        "to": upper,
        "bytes": size,
        "state": state,
        "why": why,
    }


def run_now(settings: Settings) -> Rows:
    if settings.archive_dir is None:
        raise SystemExit("ARCHIVE_DIR is not set: nothing is archived")
    retention = timedelta(days=settings.retention_days)
    report = Archiver(
        settings.database_url, settings.archive_dir, retention, settings.archive_block
    ).run()
    if report is None:
        return [{"partition": None, "outcome": "another archiver is running"}]
    rows: Rows = [{"partition": name, "outcome": "archived"} for name in report.archived]
    rows += [{"partition": name, "outcome": "busy: next run"} for name in report.busy]
    for name, kept in report.blocked.items():
        rows += [{"partition": name, "outcome": f"waits: {_why(b)}"} for b in kept]
    return rows


def _why(kept: Blocker) -> str:
    return f"{kept.reason}: {kept.withdrawals} ({', '.join(kept.examples)})"
