"""The indexes live traffic touches, read into memory before a round of load
(bench/volume.py).

Why: a withdrawal's keys are uuid5 of what cascade-core sent (workflows/identity.py:
they must survive a lost commit), so each insert lands on a random leaf of every index
on order_queues and order_tasks, and of the month's audit partition. On a database of
5 million withdrawals those indexes are gigabytes; a server that has been taking 40/s
for a day holds them in memory, because every second touches pages all over them. A
stack started on a database that was just filled (23 GiB written through a page cache
of about 11 GiB) finds them on disk instead: its first minutes measure the disk, not the
service (a first round's p95 of 1.7 s against 28 ms on the empty database, 5M run of
2026-12-07). Reading them once, sequentially, is what an hour of traffic would do.

Only indexes, and only those of the tables the load writes: the history itself (older
months' partitions, the tables' heaps, whose new rows go to their last pages) stays
as cold as it would be. Where they fit in half of shared buffers they are read into
them (pg_prewarm's 'buffer' mode); else into the page cache only ('read'), so as not
to push out what the service holds there. Without the extension (not every server has
contrib), the round runs as it is, and the bench says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from service.history import partitions

# The tables a withdrawal writes, and the audit trail's partitions that hold this
# month's (and the default partition, where a month nobody made would go).
HOT_TABLES = (
    "order_queues",
    "order_tasks",
    "webhook_inbox",
    "outbox",
    "provider_outcomes",
    "ledger_holds",
)
_INDEXES = """
SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index
WHERE indrelid = ANY(%s::regclass[]) ORDER BY 1
"""


@dataclass(frozen=True)
class Warmed:
    indexes: int
    bytes: int
    seconds: float  # 0 with no extension
    available: bool


def prewarm(url: str) -> Warmed:
    """Read the hot indexes of the database at `url` into memory (shared buffers or
    the page cache, as above)."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except psycopg.Error:
            return Warmed(0, 0, 0.0, available=False)
        now = datetime.now(UTC)
        tables = [t for t in HOT_TABLES if _exists(conn, t)] + [
            p.name
            for p in partitions(conn)
            if p.upper is None or ((p.lower is None or p.lower <= now) and now < p.upper)
        ]
        found = conn.execute(_INDEXES, (tables,)).fetchall()
        hot = sum(int(b) for _, b in found)
        mode = "buffer" if hot <= _shared_buffers(conn) // 2 else "read"
        for name, _ in found:
            conn.execute("SELECT pg_prewarm(%s::regclass, %s)", (name, mode))
    return Warmed(len(found), hot, time.monotonic() - started, True)


def _shared_buffers(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute(
        "SELECT setting::bigint * current_setting('block_size')::bigint"
        " FROM pg_settings WHERE name = 'shared_buffers'"
    ).fetchone()
    return int(str(row[0])) if row else 0


def _exists(conn: psycopg.Connection[tuple[object, ...]], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])
