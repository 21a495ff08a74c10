"""An archived partition of the audit trail on disk (docs/ops.md, "Retention and the
archive"): compressed CSV in blocks, a block index and a manifest, in one directory.

    manifest.json   the partition and its range; each file's rows, bytes and sha256; each
                    table's columns with their types (an archive describes itself)
    events.csv.gz   the partition's rows, in (queue_id, id) order
    queues.csv.gz   copies of those withdrawals' order_queues rows (the hot rows stay:
                    docs/ops.md says why)
    tasks.csv.gz    copies of their order_tasks rows, in (queue_id, position) order
    blocks.csv      per block: its withdrawals' ids, (after, upto], and where the block
                    lies in each file (offset, length, rows)

A block is a run of withdrawals (`block` of them), and a gzip member of its own in each
file: a file of members is one gzip stream to any reader (`zcat events.csv.gz` reads it
whole), yet one withdrawal's history is read by decompressing one block, not the month.
CSV is PostgreSQL's own (COPY ... FORMAT csv), read back by COPY exactly as written.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

FILES = ("events", "queues", "tasks")
FORMAT = 1

# Each file's rows for one block of withdrawals: the partition's through its (queue_id,
# id) index, which gives both the range and the order; the queue and task rows through
# their keys, the block's ids in hand (a join or IN (subquery) let the planner read the
# whole table, once per block). The partition may still be attached (an archive written
# ahead, service/archive.py): the reader is one snapshot, and the archive is used only
# if the detached table holds exactly as many rows. The queue and task rows copied
# belong to final withdrawals, which change only with an audit row.
_BLOCK_ROWS = {
    "events": "SELECT * FROM {table} WHERE queue_id > %(after)s AND queue_id <= %(upto)s"
    " AND (%(upto_id)s::bigint IS NULL OR id <= %(upto_id)s) ORDER BY queue_id, id",
    "queues": "SELECT * FROM order_queues WHERE id = ANY(%(ids)s) ORDER BY id",
    "tasks": "SELECT * FROM order_tasks WHERE queue_id = ANY(%(ids)s) ORDER BY queue_id, position",
}
_TABLES = {"queues": "order_queues", "tasks": "order_tasks"}
# The next block: up to `block` withdrawals after `after` (an index-only walk).
_NEXT_BLOCK = "SELECT DISTINCT queue_id FROM {table} WHERE queue_id > %s ORDER BY queue_id LIMIT %s"
_COLUMNS = """
SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum
"""
NIL = UUID(int=0)  # below every id: the first block's `after` (no withdrawal has it)


@dataclass(frozen=True)
class FileSum:
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    partition: str
    lower: str | None  # ISO timestamps; None: from the start of time
    upper: str
    withdrawals: int
    files: dict[str, FileSum]  # events, queues, tasks and blocks
    columns: dict[str, list[tuple[str, str]]]  # per table file: (name, type)
    format: int = FORMAT
    # Written ahead (service/archive_settled.py): the events are exactly those with an
    # id <= settled_upto, on `history` (cluster/timeline). None: as read.
    settled_upto: int | None = None
    history: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data: dict[str, Any] = json.loads(raw)
        files = {name: FileSum(**f) for name, f in data.pop("files").items()}
        columns = {name: [(c, t) for c, t in cs] for name, cs in data.pop("columns").items()}
        known = {f.name for f in fields(cls)}  # a later release's additions are skipped
        return cls(files=files, columns=columns, **{k: v for k, v in data.items() if k in known})


class _Member:
    """One file being written: its gzip members, bytes so far and running sha256."""

    def __init__(self, path: Path) -> None:
        self.out = path.open("wb")
        self.sha = hashlib.sha256()
        self.offset = self.rows = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.sha.update(data)
        self.offset += len(data)

    def flush_to_disk(self) -> None:
        """What this file holds so far, on the disk. Once a block: a month's archive
        left to the kernel's writeback piles up hundreds of MiB, and on ext4 the
        database's next WAL fsync can wait for it (data=ordered)."""
        self.out.flush()
        os.fdatasync(self.out.fileno())

    def close(self) -> FileSum:
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()
        return FileSum(self.rows, self.offset, self.sha.hexdigest())


class Pacer:
    """Rests `pace` times as long as the work took, every SLICE_S of work (0: never).

    Why in slices: the work is mostly the database backend's (an index scan of the
    month, at normal priority, which no nice value of ours reaches), and it goes only
    as fast as the COPY stream is read. Resting between blocks (2,000 withdrawals, about
    0.4 s of a core each) let the backend take a core for 0.4 s at a time, and the
    writers queued behind it (their p99 274-555 ms against 78 ms, bench/volume.py, the
    5M run of 2026-12-07). Resting inside the stream bounds a burst to a slice plus what
    the socket's buffers let the backend write ahead (a few hundred KiB of CSV). It
    does not lower the total (about 40 s of the backend's CPU for such a month), and
    in the runs since the writers' p99 while it runs was still 0.4-1.2 s on 2 cores
    (docs/capacity.md, "Two more runs on a new machine")."""

    SLICE_S = 0.02

    def __init__(
        self,
        pace: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pace, self._sleep, self._clock = pace, sleep, clock
        self._since = clock()

    def tick(self) -> None:
        """A piece of work done: rest if a slice's worth has been done since the last."""
        if not self._pace:
            return
        busy = self._clock() - self._since
        if busy >= self.SLICE_S:
            self._sleep(self._pace * busy)
            self._since = self._clock()


def _copy_block(
    cur: psycopg.Cursor[Any],
    query: sql.Composed,
    bounds: dict[str, Any],
    into: _Member,
    pacer: Pacer,
) -> tuple[int, int, int]:
    """COPY one block's rows into a gzip member of its own: (offset, length, rows)."""
    start, packer = into.offset, zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
    with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query), bounds) as copy:
        for chunk in copy:
            into.write(packer.compress(chunk))
            pacer.tick()
    into.write(packer.flush())
    rows = max(cur.rowcount, 0)
    into.rows += rows
    return start, into.offset - start, rows


def _blocks(
    cur: psycopg.Cursor[Any], table: sql.Identifier, block: int
) -> Iterator[tuple[UUID, list[UUID]]]:
    """Each block's `after` and its withdrawals' ids, in order."""
    after = NIL
    query = sql.SQL(_NEXT_BLOCK).format(table=table)
    while ids := [row[0] for row in cur.execute(query, (after, block)).fetchall()]:
        yield after, ids
        after = ids[-1]


def write(
    conn: psycopg.Connection[Any],
    table: str,
    into: Path,
    block: int,
    pace: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    upto_id: int | None = None,
) -> tuple[int, dict[str, FileSum]]:
    """Every row of the partition `table`, with its withdrawals' queue and task rows,
    into `into`; fsynced. The number of withdrawals, and each file's sums. `pace`: rest
    that many times as long as the work took (1.0: half the time; in slices, Pacer), so
    that an archive with days to spare leaves the cores to live traffic. `upto_id`: only
    the audit rows with an id up to it (service/archive_settled.py)."""
    name = sql.Identifier(table)
    members = {f: _Member(into / f"{f}.csv.gz") for f in FILES}
    queries = {f: sql.SQL(q).format(table=name) for f, q in _BLOCK_ROWS.items()}
    index = io.StringIO()
    lines = csv.writer(index, lineterminator="\n")
    lines.writerow(
        ["after", "upto", *(f"{f}_{part}" for f in FILES for part in ("offset", "length", "rows"))]
    )
    withdrawals, pacer = 0, Pacer(pace, sleep)
    with conn.cursor() as cur:
        for after, ids in _blocks(cur, name, block):
            bounds = {"after": after, "upto": ids[-1], "ids": ids, "upto_id": upto_id}
            spots = [_copy_block(cur, queries[f], bounds, members[f], pacer) for f in FILES]
            for member in members.values():
                member.flush_to_disk()
            pacer.tick()
            lines.writerow([after, ids[-1], *(n for spot in spots for n in spot)])
            withdrawals += spots[FILES.index("queues")][2]
    sums = {f: m.close() for f, m in members.items()}
    raw = index.getvalue().encode()
    _write_synced(into / "blocks.csv", raw)
    sums["blocks"] = FileSum(raw.count(b"\n") - 1, len(raw), hashlib.sha256(raw).hexdigest())
    return withdrawals, sums


def columns(conn: psycopg.Connection[Any], table: str) -> dict[str, list[tuple[str, str]]]:
    """Each file's columns and types, as the tables have them now."""
    tables = {"events": table, **_TABLES}
    return {f: [(c, t) for c, t in conn.execute(_COLUMNS, (tables[f],)).fetchall()] for f in FILES}


def _write_synced(path: Path, raw: bytes) -> None:
    with path.open("wb") as out:
        out.write(raw)
        out.flush()
        os.fsync(out.fileno())


def seal(into: Path, manifest: Manifest, final: Path) -> str:
    """Write the manifest, then move the finished directory to its name in one rename
    (a crash before leaves a `.partial` directory, done again). Its sha256."""
    raw = manifest.to_json()
    _write_synced(into / "manifest.json", raw)
    sync_dir(into)
    into.rename(final)
    sync_dir(final.parent)
    return hashlib.sha256(raw).hexdigest()


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Corrupt(Exception):
    """An archive whose files do not match its manifest (or the catalog's record of it)."""


def read_manifest(directory: Path, manifest_sha256: str | None = None) -> Manifest:
    """The manifest (checked against the sha256 the catalog recorded, if given)."""
    raw = (directory / "manifest.json").read_bytes()
    if manifest_sha256 is not None and hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise Corrupt(f"{directory}: manifest.json is not the one recorded")
    return Manifest.from_json(raw)


def verify(directory: Path, manifest_sha256: str | None = None, pace: float = 0.0) -> Manifest:
    """The manifest, once every file is as it says (and it is as the catalog says).
    `pace`: rest that many times as long as the hashing took (Pacer)."""
    manifest = read_manifest(directory, manifest_sha256)
    pacer = Pacer(pace)
    for name, expected in manifest.files.items():
        path = directory / (f"{name}.csv.gz" if name in FILES else f"{name}.csv")
        if sha256_of(path, pacer) != expected.sha256:
            raise Corrupt(f"{path}: sha256 differs from the manifest's")
    return manifest


def sha256_of(path: Path, pacer: Pacer | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):  # about 1.5 ms of a core
            digest.update(chunk)
            if pacer is not None:
                pacer.tick()
    return digest.hexdigest()


def read_block(directory: Path, queue_id: UUID) -> dict[str, bytes] | None:
    """The CSV of each file's block that holds `queue_id` (None: no block does). Each
    gzip member carries its CRC, checked as it is decompressed."""
    with (directory / "blocks.csv").open(newline="") as index:
        for row in csv.DictReader(index):
            if UUID(row["after"]) < queue_id <= UUID(row["upto"]):
                return {f: _member(directory / f"{f}.csv.gz", row, f) for f in FILES}
    return None


def _member(path: Path, row: dict[str, str], name: str) -> bytes:
    with path.open("rb") as data:
        data.seek(int(row[f"{name}_offset"]))
        return gzip.decompress(data.read(int(row[f"{name}_length"])))
