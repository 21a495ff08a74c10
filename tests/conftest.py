"""Shared fixtures: a real PostgreSQL database per test session.

With DATABASE_URL unset the embedded PostgreSQL is started; either way a fresh
database is created for the session and dropped at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from engine.embedded import database_url as server_url


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    admin = server_url()
    name = f"ps_test_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(admin, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_url(database_url: str) -> str:
    from engine.db import apply_schema

    apply_schema(database_url)
    return database_url


# The providers every end-to-end test can use; each test sets the behaviours it needs.
PROVIDERS = ["alpha", "beta", "gamma", "delta"]
FAST_TIMING = {"recheck_base_s": 0.3, "recheck_max_attempts": 3, "webhook_sla_s": 60.0}


@pytest.fixture(scope="session")
def stack(migrated_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sandbox.stack import ProviderSpec, Stack

    specs = [ProviderSpec(name, timing=FAST_TIMING) for name in PROVIDERS]
    workdir = tmp_path_factory.mktemp("stack")
    running = Stack(migrated_url, workdir, specs).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(stack: Any) -> Iterator[Any]:
    from sandbox.client import StackClient

    c = StackClient(stack)
    for name in PROVIDERS:  # every test starts from well-behaved providers and ledger
        c.set_provider(name, behaviour="instant", webhook_delay_ms=100)
    c.set_ledger_faults()
    yield c
