"""How the due run knows a detached month's row count without counting it.

At 5 million withdrawals a month's partition holds 6 million rows; counting them at the
due date (service/archive_detach.py's row_count) took 0.8 s of a core, while live
traffic wanted both (bench/volume.py, the due run's timeline). The archive written
ahead can prove the count instead:

1. Before writing, the archiver reads the audit trail's id sequence (`upto`), then
   waits until every transaction begun before that read has ended. From then on every
   row with an id <= `upto` is committed or gone for good: ids are handed out in order
   (the sequence caches one value at a time; checked) and a row's id is drawn inside
   its inserting transaction.
2. The archive written ahead holds exactly the partition's rows with id <= `upto` (its
   events query says so), each block read after the wait.
3. At the due date, once the partition is detached, no row of it has an id > `upto`
   (an index range scan of its primary key): the table's rows are the archive's, and
   their number is the manifest's. The audit trail refuses UPDATE and DELETE, and a
   final withdrawal's queue and task rows change only with an audit row, which would
   have an id > `upto`.

All of it holds on one history of one cluster. A failover to a replica that had not
received every commit, or a restore, may lose rows the archive holds: each starts a
new timeline (or a new cluster), recorded beside `upto`; on any other, the due run
counts as before. Anything that does not hold (a sequence with a cache, a transaction
still open after WAIT_S) leaves `upto` unset: the due run counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from service import archive_files as files

# For the transactions older than the read of the sequence. A transition's is over in
# milliseconds; one still open after this is left alone, and the due run counts.
WAIT_S = 5.0
POLL_S = 0.2

# The sequence's last value, its cache, and the moment read (one statement).
_SEQUENCE = """
SELECT s.last_value, q.seqcache, clock_timestamp()
FROM pg_sequence q, LATERAL (SELECT pg_sequence_last_value(q.seqrelid) AS last_value) s
WHERE q.seqrelid = pg_get_serial_sequence('order_task_events', 'id')::regclass
"""
# Transactions of this database begun before %s and still open (prepared ones too).
_OLDER = """
SELECT (SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND xact_start < %(at)s)
     + (SELECT count(*) FROM pg_prepared_xacts
        WHERE database = current_database() AND prepared < %(at)s)
"""
# Where this history runs: the cluster and its timeline (a promotion starts a new one).
_HISTORY = """
SELECT system_identifier::text || '/' || ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::int
FROM pg_control_system()
"""  # noqa: E501
_LATE = "SELECT EXISTS (SELECT 1 FROM {} WHERE id > %s)"


@dataclass(frozen=True)
class Settled:
    upto: int  # every audit row with an id <= upto is committed or gone for good
    history: str  # system identifier / timeline where that was so


def settle(
    conn: psycopg.Connection[Any],
    wait_s: float = WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Settled | None:
    """Read the sequence and wait for the transactions begun before (None: the
    sequence caches values, there are no rows yet, or one stayed open past `wait_s`)."""
    row = conn.execute(_SEQUENCE).fetchone()
    if row is None or row[0] is None or row[1] != 1:
        return None
    upto, _, at = row
    deadline = time.monotonic() + wait_s
    while _count(conn, _OLDER, {"at": at}):
        if time.monotonic() > deadline:
            return None
        sleep(POLL_S)
    return Settled(int(upto), history(conn))


def history(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(_HISTORY).fetchone()
    assert row is not None
    return str(row[0])


def holds(conn: psycopg.Connection[Any], name: str, settled: Settled) -> bool:
    """Whether the detached partition `name` holds exactly the rows with id <= upto."""
    if history(conn) != settled.history:
        return False
    query = sql.SQL(_LATE).format(sql.Identifier(name))
    row = conn.execute(query, (settled.upto,)).fetchone()
    return row is not None and not row[0]


def proven_rows(
    conn: psycopg.Connection[Any], name: str, directories: tuple[Path, ...]
) -> int | None:
    """The detached partition's rows, from the manifest of its archive (the first of
    `directories` whose manifest proves them); None: none does, and they are counted."""
    for directory in directories:
        try:
            manifest = files.read_manifest(directory)
        except (FileNotFoundError, KeyError, ValueError, TypeError):  # none, or unreadable
            continue
        if manifest.settled_upto is None or manifest.history is None:
            continue
        if holds(conn, name, Settled(manifest.settled_upto, manifest.history)):
            return manifest.files["events"].rows
    return None


def _count(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0
