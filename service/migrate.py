"""`make migrate`: engine.migrations' command line, on DATABASE_URL or else the embedded
PostgreSQL of the local stack (devstack), started and left running if need be."""

from __future__ import annotations

import functools

from devstack.embedded import database_url
from engine import migrations


def main(argv: list[str] | None = None) -> int:
    return migrations.main(argv, default_url=functools.partial(database_url, keep_running=True))


if __name__ == "__main__":
    raise SystemExit(main())
