"""What a process checks before it starts serving or working.

The database must be reachable (a process started during an outage waits for
it), must have every migration this build needs (or get them, with
`--migrate`), and must not hold workflows (withdrawals) in flight on a
definition this build no longer has: each is refused with a message that says what to do.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import psycopg

from engine import migrations
from engine.naming import statement
from workflows.registry import Definitions

log = logging.getLogger("payment.startup")


class StartupSettings(Protocol):
    @property
    def database_url(self) -> str: ...

    @property
    def workflow_definitions(self) -> str:
        """ "module:attribute" of the Definitions to drive."""
        ...


def load_definitions(spec: str) -> Definitions:
    """The Definitions object named "module:attribute"."""
    module, _, attribute = spec.partition(":")
    found = getattr(importlib.import_module(module), attribute or "DEFINITIONS")
    if not isinstance(found, Definitions):
        raise TypeError(f"{spec} is not a workflows.registry.Definitions")
    return found


class StartupRefused(RuntimeError):
    """The process must not start against this database; the message says why."""


def prepare_database(
    conninfo: str, definitions: Definitions, *, migrate: bool = False, timeout_s: float = 300.0
) -> None:
    def check() -> None:
        if migrate:
            migrations.migrate(conninfo)
        try:
            migrations.require_current(conninfo)
        except migrations.SchemaBehind as exc:
            raise StartupRefused(str(exc)) from None
        _require_definitions(conninfo, definitions)

    when_reachable(check, timeout_s)


def startup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--migrate",
        action="store_true",
        help="apply missing migrations first (by default: refuse to start while any is missing)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run the start-up checks (migrations, workflow definitions in flight) and exit",
    )


def prepare_or_exit(settings: StartupSettings, args: argparse.Namespace) -> None:
    """prepare_database, or exit non-zero saying what to do (API and worker start-up);
    with --check, exit 0 once it passes."""
    try:
        definitions = load_definitions(settings.workflow_definitions)
        prepare_database(settings.database_url, definitions, migrate=args.migrate)
    except StartupRefused as exc:
        log.error("refusing to start: %s", exc)
        raise SystemExit(f"refusing to start: {exc}") from None
    if args.check:
        print("start-up checks passed")
        raise SystemExit(0)


def when_reachable(action: Callable[[], None], timeout_s: float) -> None:
    """Run `action`, waiting with backoff while the database is unreachable."""
    deadline, backoff = time.monotonic() + timeout_s, 0.5
    while True:
        try:
            action()
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() + backoff > deadline:
                raise
            log.warning("database unreachable (%s); retrying in %.1fs", type(exc).__name__, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


_IN_FLIGHT = """
SELECT workflow, workflow_version, count(*) AS in_flight
FROM {queues} WHERE status = 'ACTIVE'
GROUP BY 1, 2 ORDER BY 1, 2
"""


def _require_definitions(conninfo: str, definitions: Definitions) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(statement(_IN_FLIGHT, definitions.storage())).fetchall()
    have = definitions.versions()
    retired = [(str(name), int(v), int(n)) for name, v, n in rows if (name, v) not in have]
    if retired:
        which = ", ".join(f"{name} v{version} ({n} in flight)" for name, version, n in retired)
        raise StartupRefused(
            f"workflows in flight use definitions this build no longer has: {which}."
            " Keep those versions in workflows/registry.py until they finish (docs/upgrades.md)"
        )
