"""The service's stack as the benches run it: its own defaults, a fresh database."""

from __future__ import annotations

import json
import subprocess
import sys

from psycopg.conninfo import make_conninfo

from benchlib import sql
from devstack.embedded import PROJECT_ROOT, database_url
from engine.migrations import migrate
from sandbox import issuer
from sandbox.stack import Stack

# The service's own defaults (the test stack speeds some of them up).
SERVICE_DEFAULTS = {
    "WORKER_FETCH_INTERVAL_S": "5",
    "WORKER_HEARTBEAT_S": "10",
    "WORKER_STALLED_AFTER_S": "30",
    "MAINTENANCE_EVERY_S": "15",
    "HEALTH_EVERY_S": "5",
    "SWEEP_GRACE_S": "60",
    "TIMER_PUMP_INTERVAL_S": "0.2",
    "ACTIVITY_MAX_RETRIES": "70",
    "ACTIVITY_RETRY_BASE_S": "1",
    "ACTIVITY_RETRY_CAP_S": "60",
    "WORKER_CONCURRENCY": "8",
}


def fresh(name: str, schema: bool = True, admin: str | None = None) -> str:
    """A new database `name` on `admin`'s server (DATABASE_URL's, or the embedded one)."""
    admin = admin or database_url(keep_running=True)
    sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin, dbname=name)
    if schema:
        migrate(url)
    return url


def make_key(stack: Stack, *options: str) -> str:
    """An API key with every scope, made by the ops command line as ada (an admin at
    the stack's issuer); its value."""
    scopes = [f"--scope=withdrawals:{s}" for s in ("submit", "read", "cancel")]
    command = [sys.executable, "-m", "service.ops", "--json", "keys", "create", *scopes]
    token = issuer.access_token(stack.issuer_url, "ada")
    printed = subprocess.run(
        [*command, "--client=bench", *options],
        cwd=PROJECT_ROOT,
        env={**stack.env(), "OPS_ACCESS_TOKEN": token},
        capture_output=True,
        check=True,
    )
    return str(json.loads(printed.stdout)[0]["secret"])
