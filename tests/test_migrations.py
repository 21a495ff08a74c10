"""Versioned migrations: they build the schema definition, the first one is the
release before them, and they are applied once, in order, without surprises."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import procrastinate
import psycopg
import pytest

from devstack.embedded import PROJECT_ROOT
from engine import migrations
from engine.migrations import migrate
from tests.conftest import fresh_database
from tests.release import apply_release_schema, extract_release, schema_dump

FIRST = migrations.ours()[0].name
BOOKS = "schema_migrations"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_release(tmp_path_factory.mktemp("release"))


@pytest.fixture
def empty_db() -> Iterator[str]:
    with fresh_database("_mig") as url:
        yield url


@pytest.fixture
def other_db() -> Iterator[str]:
    with fresh_database("_mig2") as url:
        yield url


def test_the_migrations_build_exactly_the_schema_definition(empty_db: str, other_db: str) -> None:
    migrate(empty_db)
    with psycopg.connect(other_db, autocommit=True) as conn:
        conn.execute(procrastinate.schema.SchemaManager.get_schema())
        conn.execute((PROJECT_ROOT / "schema.sql").read_text())
    assert schema_dump(empty_db, BOOKS) == schema_dump(other_db)


def test_the_first_migration_is_the_schema_of_the_release_before_migrations(
    release: Path, empty_db: str, other_db: str
) -> None:
    apply_release_schema(release, other_db)  # the release's own start-up code
    migrate(empty_db, upto=FIRST)
    assert schema_dump(empty_db, BOOKS) == schema_dump(other_db)
    hashes = "SELECT sha256 FROM schema_applied"
    with psycopg.connect(empty_db) as ours, psycopg.connect(other_db) as theirs:
        assert ours.execute(hashes).fetchall() == theirs.execute(hashes).fetchall()


def test_a_release_database_is_adopted_then_upgraded(release: Path, empty_db: str) -> None:
    apply_release_schema(release, empty_db)
    applied = migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        rows = conn.execute("SELECT source || '/' || name, how FROM schema_migrations")
        how: dict[str, str] = dict(rows.fetchall())
    # It held procrastinate's schema and 0001 already: recorded, not run again.
    assert how[f"payment/{FIRST}"] == "baseline"
    assert {h for label, h in how.items() if label.startswith("procrastinate/")} == {"baseline"}
    assert [a for a in applied if how[a] == "applied"] == [m.label for m in migrations.ours()[1:]]
    assert migrate(empty_db) == []


def test_an_older_installation_gets_the_first_migration_run(empty_db: str) -> None:
    # A database of an earlier release (no activity column, no recorded hash).
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(procrastinate.schema.SchemaManager.get_schema())
        conn.execute(migrations.ours()[0].sql)
        conn.execute("ALTER TABLE order_tasks DROP COLUMN activity")
        conn.execute("TRUNCATE schema_applied")
    migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        how = conn.execute("SELECT how FROM schema_migrations WHERE name = %s", (FIRST,)).fetchone()
        column = conn.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_name = 'order_tasks' AND column_name = 'activity'"
        ).fetchone()
    assert how == ("applied",)
    assert column == (1,)


def test_two_processes_migrating_at_once_apply_each_migration_once(empty_db: str) -> None:
    command = [sys.executable, "-m", "engine.migrations"]
    env = {**os.environ, "DATABASE_URL": empty_db}
    procs = [
        subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    said = sorted(out.decode().strip().splitlines()[-1] for out, _ in outputs)
    total = len(migrations.procrastinates()) + len(migrations.ours())
    assert said == [f"{total} migration(s) applied", "the database is up to date"]
    with psycopg.connect(empty_db) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT (source, name)) FROM " + BOOKS)
        assert rows.fetchone() == (total, total)


def test_a_migration_changed_after_it_was_applied_is_refused(empty_db: str) -> None:
    migrate(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET sha256 = 'edited' WHERE name = %s", (FIRST,))
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        migrate(empty_db)


def test_migrating_an_up_to_date_database_takes_no_lock_on_the_tables(migrated_url: str) -> None:
    # A transition in flight holds ROW EXCLUSIVE on order_tasks and order_queues.
    with psycopg.connect(migrated_url) as transition:
        transition.execute("UPDATE order_tasks SET version = version WHERE false")
        transition.execute("UPDATE order_queues SET updated_at = updated_at WHERE false")
        finished = threading.Event()

        def start_a_process() -> None:
            migrate(migrated_url)
            finished.set()

        starter = threading.Thread(target=start_a_process)
        started = time.monotonic()
        starter.start()
        assert finished.wait(timeout=10), "migrate waited for the transition's locks"
        assert time.monotonic() - started < 10
        transition.rollback()
    starter.join()


@pytest.mark.parametrize("entry", [["server.py", "--port", "0"], ["worker.py"]])
def test_starting_on_a_database_one_migration_behind_exits_saying_make_migrate(
    empty_db: str, entry: list[str]
) -> None:
    migrate(empty_db, upto=migrations.ours()[-2].name)
    env = {**os.environ, "DATABASE_URL": empty_db}
    started = subprocess.run(
        [sys.executable, *entry],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "1 migration(s) behind" in started.stderr, started.stderr
    assert "run `make migrate`" in started.stderr
    assert migrations.ours()[-1].label in started.stderr

    # --migrate applies it first (--check: then exit instead of serving).
    checked = subprocess.run(
        [sys.executable, *entry, "--migrate", "--check"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert migrate(empty_db) == []
