"""Detaching a month of the audit trail: the one step of retention that touches what
live traffic writes (service/archive.py; docs/ops.md, "Retention and the archive").

What the detach locks, and in which order, so that it never deadlocks with a writer and
no writer waits on it for long:

1. `dead_letters` and `ledger_findings` IN SHARE MODE: the two things that can still
   come to a final withdrawal and keep it hot. SHARE waits for those in flight, and
   holds off new ones until the detach commits. Their writers take these tables before
   the audit trail (a dead letter is inserted, then journaled), so taking them first
   is a writer's own order.
2. The blockers are asked, under those locks (service/history.py): a final withdrawal
   stays final, and nothing else can make one stay now.
3. `ALTER TABLE ... DETACH PARTITION`: ACCESS EXCLUSIVE on the audit trail, its default
   partition and the month (not CONCURRENTLY: PostgreSQL allows that only without a
   default partition). It waits for the transactions writing audit rows now, each a
   few milliseconds, and every new writer waits behind it; the detach itself is
   catalog work. The audit trail has no foreign keys (migration 0017), so neither the
   detach nor the later DROP locks order_queues or order_tasks.

Every lock is asked for with LOCK_TIMEOUT: a writer queued behind the detach waits at
most that long. On a timeout everything is rolled back, and the detach is tried again
after a pause, up to ATTEMPTS times; then the month waits for the next run ("busy").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from service.history import Blocker, Partition, blockers

log = logging.getLogger("payment.archive")

LOCK_TIMEOUT = "250ms"
ATTEMPTS = 8
PAUSE_S = 0.5  # between attempts: the transactions in the way finish meanwhile

_STOP_BLOCKERS = "LOCK TABLE dead_letters, ledger_findings IN SHARE MODE"
_DETACH = "ALTER TABLE order_task_events DETACH PARTITION {}"
_RECORD = "INSERT INTO event_archives (partition, lower, upper) VALUES (%s, %s, %s)"
_LEFT_DETACHED = "SELECT partition FROM event_archives WHERE state = 'detached'"
_RANGE = "SELECT lower, upper FROM event_archives WHERE partition = %s"
# The detached table's indexes, the largest first, with the constraint that owns one
# (its primary key: dropped as a constraint).
_INDEXES = """
SELECT ic.relname, c.conname
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
WHERE i.indrelid = %s::regclass
ORDER BY pg_relation_size(i.indexrelid) DESC
"""


class Busy(Exception):
    """The detach's locks were not granted within LOCK_TIMEOUT, ATTEMPTS times."""


def detach(
    conn: psycopg.Connection[Any],
    partition: Partition,
    pause: Callable[[float], None] = time.sleep,
) -> list[Blocker]:
    """Detach the partition and record it in event_archives, in one transaction; or, if
    a withdrawal must stay, change nothing and return what keeps it. Busy when the locks
    were not granted (nothing changed)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                conn.execute(_STOP_BLOCKERS)
                if found := blockers(conn, partition):
                    return found
                conn.execute(sql.SQL(_DETACH).format(sql.Identifier(partition.name)))
                conn.execute(_RECORD, (partition.name, partition.lower, partition.upper))
            return []
        except psycopg.errors.LockNotAvailable:
            log.info("archive: %s: locks busy (attempt %d)", partition.name, attempt)
            pause(PAUSE_S)
    raise Busy(partition.name)


def left_detached(conn: psycopg.Connection[Any]) -> list[str]:
    """Partitions an earlier run detached and did not finish archiving."""
    return [str(r[0]) for r in conn.execute(_LEFT_DETACHED).fetchall()]


def detached_range(conn: psycopg.Connection[Any], name: str) -> tuple[Any, Any]:
    """The (lower, upper) the catalog recorded for a detached partition."""
    row = conn.execute(_RANGE, (name,)).fetchone()
    assert row is not None, name
    return row[0], row[1]


def row_count(conn: psycopg.Connection[Any], name: str) -> int:
    """Rows of a partition (a detached one: nothing writes it any more). Counted from
    an index where the planner can (a month long vacuumed: an index-only scan), not
    by reading the table: at 5 million withdrawals a month's table is 2.2 GiB, its
    (queue_id, id) index a tenth of that, and the due run's reads compete with the
    writers' WAL flushes on the same disk (bench/volume.py). In one backend: parallel
    workers would take the cores live traffic needs for a count that is not urgent."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def drop_indexes(conn: psycopg.Connection[Any], name: str, rest: Callable[[], None]) -> list[str]:
    """Drop the detached table's indexes one at a time, each in its own transaction,
    `rest` after each: the dropped indexes, largest first.

    Why not with the table: a DROP frees its files when it commits, and on ext4 with
    online discard (this VM's mount) freeing gigabytes at once holds up every
    fdatasync meanwhile, the database's WAL flushes among them: unlinking a 2 GiB file
    stalled fdatasync for 42-45 ms, the same file shrunk 64 MiB at a time for 12 ms
    (docs/capacity.md, "Run 12"). A month's partition is 2.2 GiB, a third of it
    indexes; dropped apart, each commit frees a few hundred MiB and the writers' WAL
    flushes catch up between. A crash between two drops leaves the table detached
    and recorded: the next run finishes it (its rows are proven by the archive, or
    counted without an index)."""
    dropped = []
    for row in conn.execute(_INDEXES, (name,)).fetchall():
        index, constraint = row[0], row[1]
        with conn.transaction():
            if constraint is not None:
                conn.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        sql.Identifier(name), sql.Identifier(constraint)
                    )
                )
            else:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
        dropped.append(index)
        rest()
    return dropped
