"""Applying the schema at start-up must not lock the withdrawal tables under live traffic."""

from __future__ import annotations

import threading
import time

import psycopg

from engine.db import apply_schema


def test_applying_an_unchanged_schema_takes_no_lock_on_the_tables(migrated_url: str) -> None:
    # A transition in flight holds ROW EXCLUSIVE on order_tasks (and will want order_queues).
    with psycopg.connect(migrated_url) as transition:
        transition.execute("UPDATE order_tasks SET version = version WHERE false")
        transition.execute("UPDATE order_queues SET updated_at = updated_at WHERE false")
        finished = threading.Event()

        def start_a_process() -> None:
            apply_schema(migrated_url)
            finished.set()

        starter = threading.Thread(target=start_a_process)
        started = time.monotonic()
        starter.start()
        # Re-running CREATE INDEX would wait for SHARE locks behind the transition (and,
        # with the opposite lock order, deadlock it); an unchanged schema runs nothing.
        assert finished.wait(timeout=10), "apply_schema waited for the transition's locks"
        assert time.monotonic() - started < 10
        transition.rollback()
    starter.join()


def test_schema_is_applied_again_only_when_it_changes(migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        applied = conn.execute("SELECT count(*) FROM schema_applied").fetchone()
    apply_schema(migrated_url)
    with psycopg.connect(migrated_url) as conn:
        again = conn.execute("SELECT count(*) FROM schema_applied").fetchone()
    assert applied == again == (1,)
