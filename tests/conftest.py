"""Shared fixtures: a real PostgreSQL database per test session.

With DATABASE_URL unset the embedded PostgreSQL is started; either way a fresh
database is created for the session and dropped at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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
