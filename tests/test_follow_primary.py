"""Connections follow a moving primary: a multi-host URL gets what libpq needs to
find the primary, and a pooled connection that cannot write is replaced."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import PoolTimeout

from engine.db import check_idle_connection, follow_primary, on_standby, open_pool
from service.settings import Settings


def test_a_multi_host_url_asks_for_the_primary() -> None:
    url = "postgresql://app@10.0.0.1:5432,10.0.0.2:5432,10.0.0.3:5432/payments"
    params = conninfo_to_dict(follow_primary(url))
    assert params["host"] == "10.0.0.1,10.0.0.2,10.0.0.3"
    assert params["target_session_attrs"] == "read-write"
    assert params["keepalives"] == "1" and params["connect_timeout"] == "3"
    # what the URL says itself wins
    mine = conninfo_to_dict(follow_primary(url + "?target_session_attrs=primary&connect_timeout=9"))
    assert (mine["target_session_attrs"], mine["connect_timeout"]) == ("primary", "9")


@pytest.mark.parametrize(
    "url",
    ["postgresql://app@db:5432/payments", "host=/run/postgresql dbname=x", "dbname=x"],
)
def test_a_single_host_url_is_left_alone(url: str) -> None:
    assert follow_primary(url) == url


def test_settings_take_the_followed_url() -> None:
    settings = Settings.from_env("host=a,b,c dbname=payments")
    assert conninfo_to_dict(settings.database_url)["target_session_attrs"] == "read-write"


async def test_a_pooled_connection_that_cannot_write_is_never_handed_out(
    migrated_url: str,
) -> None:
    """The server reports `default_transaction_read_only` (as it reports
    `in_hot_standby` on a standby): the check refuses such a connection, so the pool
    never hands one out (an API request answers 503 and is retried) and opens
    another, on the primary once libpq finds it."""
    read_only = make_conninfo(migrated_url, options="-c default_transaction_read_only=on")
    async with await psycopg.AsyncConnection.connect(read_only) as conn:
        assert on_standby(conn)  # type: ignore[arg-type]
        with pytest.raises(psycopg.OperationalError, match="read-only"):
            await check_idle_connection(conn)  # type: ignore[arg-type]
    pool = await open_pool(read_only, min_size=1, max_size=1, check=True)
    try:
        with pytest.raises(PoolTimeout):
            async with pool.connection(timeout=1.5):
                pass
    finally:
        await pool.close()
    async with await psycopg.AsyncConnection.connect(migrated_url) as writable:
        assert not on_standby(writable)  # type: ignore[arg-type]
