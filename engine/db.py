"""Connections: psycopg 3 pools. (The schema: engine/migrations.py.)

Following the primary (docs/ha.md). A highly available PostgreSQL moves its
primary: every connection dies at once, and the new primary is another host.
libpq finds it when `DATABASE_URL` lists every node (`host=a,b,c`) with
`target_session_attrs=read-write`: it tries them in turn and keeps the one that
takes writes. `follow_primary` adds that attribute to a multi-host URL that lacks
it (without it libpq would settle on the first node that answers, a standby as
often as not), and TCP keepalives so that a connection to a machine that vanished
without closing its sockets is found dead in seconds, not after the kernel's two
hours. Every loop that holds a connection (pools, LISTEN, the relay's lock, the
timer pump, procrastinate's worker) opens a new one after an error, so they all
land on the new primary; `check_idle_connection` drops a pooled connection that
finds itself on a standby.
"""

from __future__ import annotations

import select

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]

# psycopg_pool retries a failed connection after 1, 2, 4, 8, 16 … s until this
# window ends, then starts again from 1 s when a client next asks. Its default (5
# min) let the gaps grow past the outage: a pool that lost its primary reached the
# new one up to 16 s after Patroni had promoted it. Ten seconds keeps every gap
# under 4 s.
RECONNECT_WINDOW_S = 10.0
# A statement's CTE that commits its transaction without waiting for the WAL to reach
# the disk (this transaction only): for bookkeeping a crash may lose the last
# milliseconds of (rate limits' tokens and slots), never for money or a workflow.
NO_FLUSH = "SELECT set_config('synchronous_commit', 'off', true) AS off"

# Added to a multi-host URL where it says nothing else (each can be overridden in it).
_MULTI_HOST_DEFAULTS = {
    "target_session_attrs": "read-write",
    "connect_timeout": "3",  # per host: a dead node costs 3 s, not the TCP timeout
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
}


def follow_primary(conninfo: str) -> str:
    """The conninfo, with what following a moving primary needs when it names
    several hosts; a single-host conninfo (or a socket) is returned as it is."""
    params = conninfo_to_dict(conninfo)
    if "," not in str(params.get("host") or params.get("hostaddr") or ""):
        return conninfo
    missing = {k: v for k, v in _MULTI_HOST_DEFAULTS.items() if k not in params}
    return make_conninfo(conninfo, **missing) if missing else conninfo


def on_standby(conn: AsyncConnection[DictRow]) -> bool:
    """Whether the server says (PostgreSQL 14+ reports it on every change, at no
    round trip) that this session cannot write: a standby, or a read-only default."""
    status = conn.pgconn.parameter_status
    return status(b"in_hot_standby") == b"on" or status(b"default_transaction_read_only") == b"on"


async def open_pool(
    conninfo: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    acquire_timeout_s: float = 30.0,
    check: bool = False,
) -> Pool:
    """`check` tests each connection as it is handed out, so that after a database
    restart the first request gets a fresh connection, not a dead one. The test
    costs no round trip unless the idle connection has something to read (see
    `check_idle_connection`)."""
    pool: Pool = AsyncConnectionPool(
        conninfo,
        connection_class=AsyncConnection[DictRow],
        min_size=min_size,
        max_size=max_size,
        timeout=acquire_timeout_s,
        kwargs={"row_factory": dict_row, "autocommit": True},
        check=check_idle_connection if check else None,
        configure=no_jit,
        reconnect_timeout=RECONNECT_WINDOW_S,
        open=False,
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def no_jit(conn: AsyncConnection[DictRow]) -> None:
    """Each pooled session plans without JIT compilation. Every statement the service
    runs through a pool takes milliseconds; PostgreSQL compiles a statement whose
    estimated cost passes jit_above_cost, and an estimate that grows with the history
    (a bound it cannot know when planning) made a 0.3 ms query spend 1.3 s of a core
    in LLVM on a 5-million-withdrawal database, every time it ran (docs/capacity.md,
    "Run 10"). Set once per connection, at no cost per statement."""
    await conn.execute("SET jit = off")


async def check_idle_connection(conn: AsyncConnection[DictRow]) -> None:
    """psycopg_pool's check (an empty query) only when the idle connection's socket
    is readable. A server that restarts or ends the session says so and closes
    the socket, which makes it readable; a healthy idle connection has nothing to
    read. The plain check on every hand-out was a round trip and a server-side
    transaction per request: a third of the API's commits."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("connection is closed")
    if on_standby(conn):  # the pool drops it and opens one on the primary
        raise psycopg.OperationalError("connection is on a read-only standby")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)
