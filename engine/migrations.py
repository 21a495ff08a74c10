"""Versioned schema migrations: numbered SQL files, applied in order, each once.

One ordered run covers two sources:

1. procrastinate's own migrations, as its documentation prescribes: a new
   database gets procrastinate's whole schema at the installed version; after
   that, each migration file the installed release ships and the database lacks
   is applied in name order. Its *post* migrations (`*_post_*`) are for after
   every process runs the new release: `--pre-deploy` stops before them.
2. ours: `migrations/NNNN_name.sql`.

Each migration runs in its own transaction together with the row that records
it, under `lock_timeout` (a DDL statement queued behind a long transaction
would block every query on its table), and the whole run holds an advisory
lock, so N processes migrating at once apply each migration exactly once.

API and workers do not migrate at start: they check (`require_current`) and
refuse to start on a database that is behind, saying to run `make migrate`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import procrastinate
import psycopg
from psycopg import Connection
from psycopg.rows import TupleRow

from engine.db import follow_primary

log = logging.getLogger("payment.migrations")
OURS = Path(__file__).resolve().parent.parent / "migrations"
PROCRASTINATE = Path(procrastinate.schema.SchemaManager.get_migrations_path())
_LOCK = 7_303_001  # the advisory lock the release before migrations took to apply schema.sql
# The procrastinate release that databases made before migrations were recorded
# ran (requirements.lock then): its bundled migrations are already in them.
BEFORE_MIGRATIONS_PROCRASTINATE = (3, 10, 0)
LOCK_TIMEOUT = "10s"
LOCK_ATTEMPTS = 3
Conn = Connection[TupleRow]
HINT = "run `make migrate` (or `python -m engine.migrations`, or start with --migrate)"


class SchemaBehind(RuntimeError):
    """The database lacks migrations this build needs."""


@dataclass(frozen=True)
class Migration:
    source: str  # "procrastinate" or "payment"
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def post_deploy(self) -> bool:
        return self.source == "procrastinate" and "_post_" in self.name

    @property
    def label(self) -> str:
        return f"{self.source}/{self.name}"


def ours() -> list[Migration]:
    files = sorted(OURS.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [Migration("payment", f.stem, f) for f in files]


def procrastinates() -> list[Migration]:
    files = sorted(PROCRASTINATE.glob("[0-9][0-9].[0-9][0-9].[0-9][0-9]_*.sql"))
    return [Migration("procrastinate", f.stem, f) for f in files]


def _version(migration: Migration) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)_", migration.name)
    assert match, migration.name
    return tuple(int(part) for part in match.groups())


_BOOKS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    source     text NOT NULL,
    name       text NOT NULL,
    sha256     text NOT NULL,
    -- 'applied'; or 'baseline': already in the database when it was recorded
    how        text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, name)
)
"""


def _recorded(conn: Conn) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return {}
    rows = conn.execute("SELECT source || '/' || name, sha256 FROM schema_migrations").fetchall()
    return {str(label): str(sha) for label, sha in rows}


def _exists(conn: Conn, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def missing(conn: Conn, *, with_post: bool = False) -> list[Migration]:
    """What this build needs and the database lacks, in the order it would be applied
    (procrastinate's post migrations only `with_post`)."""
    recorded = _recorded(conn)
    needed = [m for m in procrastinates() if with_post or not m.post_deploy] + ours()
    return [m for m in needed if m.label not in recorded]


def require_current(conninfo: str) -> None:
    """Raise SchemaBehind, saying what to run, unless the database has every
    migration this build needs (procrastinate's post migrations may come later)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        lacking = missing(conn)
    if lacking:
        names = ", ".join(m.label for m in lacking[:5]) + (" …" if len(lacking) > 5 else "")
        raise SchemaBehind(
            f"the database is {len(lacking)} migration(s) behind this build ({names}): {HINT}"
        )


def migrate(conninfo: str, *, pre_deploy: bool = False, upto: str | None = None) -> list[str]:
    """Apply what is missing, in order; returns the labels applied (or recorded).
    `pre_deploy`: stop before procrastinate's post migrations. `upto`: stop after
    our migration of that name (tests build older databases with it)."""
    done: list[str] = []
    with psycopg.connect(follow_primary(conninfo), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            conn.execute(_BOOKS)
            done += _adopt_procrastinate(conn)
            for migration, baseline in _plan(conn, pre_deploy, upto):
                _apply(conn, migration, baseline)
                done.append(migration.label)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    return done


def _adopt_procrastinate(conn: Conn) -> list[str]:
    """The first run: a new database gets procrastinate's whole schema, and every
    migration it bundles is recorded as in it; a database made before migrations
    were recorded holds those of the release it ran. One transaction."""
    if any(label.startswith("procrastinate/") for label in _recorded(conn)):
        return []
    theirs = procrastinates()
    with conn.transaction():
        if not _exists(conn, "procrastinate_jobs"):
            conn.execute(procrastinate.schema.SchemaManager.get_schema())
            log.info("procrastinate's schema applied (%s)", procrastinate.__version__)
        else:
            theirs = [m for m in theirs if _version(m) <= BEFORE_MIGRATIONS_PROCRASTINATE]
        for migration in theirs:
            _record(conn, migration, "baseline")
    return [m.label for m in theirs]


def _plan(conn: Conn, pre_deploy: bool, upto: str | None) -> Iterator[tuple[Migration, bool]]:
    """(migration, baseline?) in order. A baseline is recorded without running it:
    0001 on a database that the release before migrations made (it recorded the
    hash of its schema.sql, which 0001 is)."""
    recorded = _recorded(conn)
    for migration in procrastinates():
        if migration.label not in recorded and not (pre_deploy and migration.post_deploy):
            yield migration, False
    for migration in ours():
        if migration.label in recorded:
            _check_unchanged(migration, recorded[migration.label])
        else:
            yield migration, migration.name.startswith("0001_") and _release_schema_applied(conn)
        if migration.name == upto:
            return


def _check_unchanged(migration: Migration, sha256: str) -> None:
    if migration.sha256 != sha256:
        raise RuntimeError(
            f"migration {migration.label} was changed after it was applied: a schema change"
            " goes in a new migration (docs/upgrades.md)"
        )


def _release_schema_applied(conn: Conn) -> bool:
    """Does the database hold exactly 0001 already, applied by that release itself?"""
    if not _exists(conn, "schema_applied"):
        return False
    digest = re.search(r"VALUES \('([0-9a-f]{64})'\)", ours()[0].sql)
    assert digest, "0001 records the hash of the release's schema.sql"
    row = conn.execute("SELECT 1 FROM schema_applied WHERE sha256 = %s", (digest[1],)).fetchone()
    return row is not None


def _apply(conn: Conn, migration: Migration, baseline: bool) -> None:
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            with conn.transaction():
                if not baseline:
                    conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    conn.execute(migration.sql)
                _record(conn, migration, "baseline" if baseline else "applied")
            break
        except psycopg.errors.RaiseException as exc:  # the migration's own refusal
            raise RuntimeError(f"{migration.label}: {exc.diag.message_primary}") from None
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            # a migration that locks several tables may meet a transaction that locks them
            # in another order: whichever PostgreSQL chose to fail, it is tried again
            if attempt == LOCK_ATTEMPTS:
                raise RuntimeError(
                    f"{migration.label} waited {LOCK_TIMEOUT} for a table lock {LOCK_ATTEMPTS}"
                    " times (long transactions on its tables?); nothing of it was applied"
                ) from None
            log.warning(
                "%s: lock not granted within %s; trying again", migration.label, LOCK_TIMEOUT
            )
            time.sleep(attempt)
    if not baseline:
        log.info("applied %s", migration.label)


def _record(conn: Conn, migration: Migration, how: str) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (source, name, sha256, how) VALUES (%s, %s, %s, %s)",
        (migration.source, migration.name, migration.sha256, how),
    )


def main(argv: list[str] | None = None, default_url: Callable[[], str] | None = None) -> int:
    """The database: --database-url, else DATABASE_URL, else the caller's default_url()."""
    import argparse
    import os
    import sys

    from engine import logs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pre-deploy",
        action="store_true",
        help="stop before procrastinate's post migrations (run again once every process is new)",
    )
    parser.add_argument(
        "--status", action="store_true", help="list what is missing; change nothing"
    )
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args(argv)
    logs.setup()
    url = args.database_url or (default_url() if default_url else "")
    if not url:
        parser.error("no database: set DATABASE_URL or --database-url (or run `make migrate`)")
    url = follow_primary(url)
    if args.status:
        with psycopg.connect(url, autocommit=True) as conn:
            lacking = missing(conn, with_post=True)
        for migration in lacking:
            print(f"missing  {migration.label}")
        print(f"{len(lacking)} migration(s) missing" if lacking else "the database is up to date")
        return 0
    try:
        applied = migrate(url, pre_deploy=args.pre_deploy)
    except RuntimeError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    print(f"{len(applied)} migration(s) applied" if applied else "the database is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
