"""`python -m sandbox --config PATH [--host 127.0.0.1] [--port 8090] [--database-url URL]`.

The database is `--database-url`, else `DATABASE_URL`, else the project's
embedded PostgreSQL (devstack.embedded), so `make demo` works on a fresh machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from sandbox.app import build_app
from sandbox.config import ConfigError, load_config

GRACEFUL_SHUTDOWN_S = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--config", required=True, help="sandbox TOML config")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--database-url", default=None, help="default: $DATABASE_URL")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.database_url or os.environ.get("DATABASE_URL"):
        return serve(args)
    from devstack import lifecycle  # the embedded PostgreSQL: `make stop` finds this process

    with lifecycle.owner("sandbox"):
        return serve(args)


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        config = load_config(args.config)
    except (OSError, ConfigError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    database_url = args.database_url
    if not database_url:
        # Imported lazily: it may start an embedded PostgreSQL.
        from devstack.embedded import database_url as default_database_url

        database_url = default_database_url()
    app = build_app(config, database_url)
    # The repr names providers and behaviours only, never keys or secrets.
    logging.getLogger("sandbox").info("starting %r", config)
    # access_log off: AccessLog logs one secret-free line per request instead.
    # A bounded graceful shutdown: a `timeout` provider may be hanging a request.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
