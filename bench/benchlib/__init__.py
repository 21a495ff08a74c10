"""Helpers shared by the benchmarks (a package, so `make bench` does not run it)."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root
from devstack.embedded import database_url
from engine.migrations import migrate

DB = "payment_bench"


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def sql(url: str, *statements: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run statements on one autocommit session (those with placeholders get `params`);
    return the last statement's rows."""
    rows: list[tuple[Any, ...]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            cur = conn.execute(stmt, params if "%s" in stmt else ())
            rows = cur.fetchall() if cur.description else []
    return rows


def fresh_database(task_id: str) -> str:
    """Drop and create `payment_bench` on the server of devstack.embedded.database_url(),
    apply the schema, add the one order_queues + order_tasks row timers reference."""
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)  # "app in __main__"
    admin = database_url()
    sql(admin, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', f'CREATE DATABASE "{DB}"')
    url = make_conninfo(admin, dbname=DB)
    migrate(url)
    sql(
        url,
        "WITH q AS (INSERT INTO order_queues (id, order_id, request_hash, merchant_id,"
        " amount_minor, currency) VALUES (gen_random_uuid(), 'bench', 'h', 'bench', 100, 'EUR')"
        " RETURNING id) INSERT INTO order_tasks (id, queue_id, position, provider)"
        " SELECT %s, id, 0, 'bench' FROM q",
        params=(task_id,),
    )
    return url


def drop_database() -> None:
    sql(database_url(), f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
