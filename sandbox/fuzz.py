"""`make fuzz`: schemathesis against the served /openapi.json of a real local stack.

Starts the sandbox, the API and two workers on a fresh database (embedded
PostgreSQL when DATABASE_URL is unset), then lets schemathesis generate requests
for every operation with every check on: no 5xx, and no answer that breaks the
document. One header reaches all: ada's access token (an admin, made with the
stack's issuer key) is also the API's token here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from devstack.embedded import database_url
from engine.migrations import migrate
from sandbox import issuer
from sandbox.stack import ProviderSpec, Stack


def fresh_database() -> str:
    admin = database_url(keep_running=True)
    name = f"ps_fuzz_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin, dbname=name)
    migrate(url)
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100, help="cases per operation")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--report", default="reports/fuzz-junit.xml")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-"))
    stack = Stack(fresh_database(), workdir, [ProviderSpec("alpha"), ProviderSpec("beta")])
    token = issuer.mint(stack.issuer_key, stack.issuer_url, "ada")
    stack.extra_env["API_TOKENS"] = token
    stack.start()
    try:
        command = [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{stack.api_url}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {token}",
            "--max-examples",
            str(args.max_examples),
            "--seed",
            str(args.seed),
            "--workers",  # one: hypothesis's lambda descriptions are not thread-safe here
            "1",
            "--generation-database",
            "none",
            "--report",
            "junit",
            "--report-junit-path",
            args.report,
            "--no-color",
        ]
        print("$", " ".join(command), flush=True)
        return subprocess.call(command, env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})  # noqa: S603
    finally:
        stack.stop()
        print(f"stack logs: {workdir}")


if __name__ == "__main__":
    sys.exit(main())
