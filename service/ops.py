"""`python -m service.ops`: the on-call command line, straight against PostgreSQL.

timeline ORDER        every event of a withdrawal (order_id or id)
stuck [--grace S]     open tasks past the point a timer or job should have moved them
manual                tasks awaiting a manual check
resolve TASK positive|negative --reason TEXT
                      applied at once, or a proposal when four-eyes applies
approve PROPOSAL [--reason TEXT], reject PROPOSAL --reason TEXT
                      another person's proposal (approver)
dlq                   dead letters not yet replayed
replay ID
reconcile             reconcile with the ledger now (the workers do every RECONCILE_EVERY_S),
                      then list the open findings, with when each was first seen (exit 1
                      if any); a hold unknown to the service is named by its order_id
providers             each provider's circuit, recent outcomes, orders in flight, limits
circuit PROVIDER open|closed|auto --reason TEXT
                      force a provider's circuit (audited), or give it back to health
keys create|list|rotate|revoke
                      cascade-core's API keys (audited; `keys create -h`)
config show|history|rollout|provider|remove-provider|restore
                      the live configuration (service/config_cli.py; `config -h`)
archive show ORDER|status|run
                      an archived withdrawal's timeline, the audit trail's partitions
                      (service/archive_cli.py; `archive -h`)

resolve and replay need a resolver, approve and reject an approver who is not the
proposer, circuit an admin: the person whose access token
is in OPS_ACCESS_TOKEN (or --token), who is the audit's actor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import httpx

from devstack.embedded import database_url_for_a_command
from engine import deadletters
from engine.contracts import UnknownTask
from service import api_keys_cli, approvals, archive_cli, config_cli, health
from service.cli_identity import signed_in
from service.four_eyes import FourEyesRules
from service.models import BadRequest
from service.principals import ADMIN, APPROVER, RESOLVER
from service.reconciliation import ReconcileFailed, open_findings, reconciler_for
from service.settings import Settings
from service.wiring import Services, open_services
from service.withdrawals import find_queue_id
from workflows.core import IllegalTransition


def _print(rows: Sequence[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(list(rows), default=str, indent=2))
        return
    if not rows:
        print("(none)")
        return
    columns = list(rows[0])
    text = [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))


def _cell(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


async def _query(svc: Services, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with svc.pool.connection() as conn:
        return await (await conn.execute(sql, args)).fetchall()


async def timeline(svc: Services, ident: str) -> list[dict[str, Any]]:
    async with svc.pool.connection() as conn:
        queue_id = await find_queue_id(conn, ident)
    if queue_id is None:
        raise SystemExit(f"no withdrawal {ident!r}")
    return await _query(
        svc,
        "SELECT event_id, occurred_at, provider, from_state, to_state, event_type, actor"
        " FROM v_withdrawal_timeline WHERE queue_id = %s ORDER BY event_id",
        queue_id,
    )


async def reconcile(svc: Services) -> list[dict[str, Any]]:
    """A reconciliation run now (after the one a worker may be running), then the
    findings left open, each with when a run first saw it (service/reconciliation.py)."""
    await reconciler_for(svc.settings, svc.outbound).run(wait=True)
    async with svc.pool.connection() as conn:
        return await open_findings(conn)


async def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env(database_url_for_a_command())
    svc = await open_services(settings, pool_size=2, inline_steps=0)  # workers take the steps
    try:
        if args.command == "reconcile":
            rows = await reconcile(svc)
            _print(rows, args.json)
            print(f"ledger drift: {len(rows)}", file=sys.stderr)
            return 1 if rows else 0
        _print(await _rows(svc, args), args.json)
        return 0
    finally:
        await svc.close()


async def _rows(svc: Services, args: argparse.Namespace) -> list[dict[str, Any]]:
    """What a command other than reconcile prints."""
    match args.command:
        case "timeline":
            return await timeline(svc, args.order)
        case "stuck":
            return await _query(
                svc, "SELECT * FROM stuck_tasks(make_interval(secs => %s))", args.grace
            )
        case "manual":
            return await _query(svc, "SELECT * FROM v_manual_check_queue ORDER BY waiting_since")
        case "dlq":
            return await _query(svc, "SELECT * FROM v_dead_letters ORDER BY dead_letter_id")
        case "resolve":
            return await resolve(svc, args)
        case "approve" | "reject":
            return await settle(svc, args)
        case "providers":
            async with svc.pool.connection() as conn:
                return await health.report(conn, svc.providers)
        case "circuit":
            return await circuit(svc, args)
        case "replay":
            return await replay(svc, args)
        case "keys":
            return await api_keys_cli.run(svc, args)
        case "config":
            return await config_cli.run(svc, args)
        case "archive":
            return await archive_cli.run(svc, args)
    raise ValueError(f"unknown command {args.command!r}")


async def resolve(svc: Services, args: argparse.Namespace) -> list[dict[str, Any]]:
    """A person's decision on a task in MANUAL_CHECK: applied at once, or a proposal
    that another person must approve (four-eyes, as in the ops API)."""
    person = await signed_in(svc, args.token, RESOLVER)
    rules = FourEyesRules.from_settings(svc.settings)
    decision = (args.outcome == "positive", args.reason)
    async with svc.pool.connection() as conn:
        done = await approvals.decide(conn, svc.engine, rules, person, str(args.task), decision)
    if done.proposal is not None:
        return [{"task_id": str(args.task), "proposal": done.proposal.id, "waits": "an approver"}]
    return [{"task_id": str(args.task), "applied": True}]


async def settle(svc: Services, args: argparse.Namespace) -> list[dict[str, Any]]:
    """An approver approves (`approve`) or rejects another person's proposal."""
    person = await signed_in(svc, args.token, APPROVER)
    proposal_id = str(args.proposal)
    async with svc.pool.connection() as conn:
        if args.command == "approve":
            done = await approvals.approve(conn, svc.engine, person, proposal_id, args.reason)
        else:
            done = await approvals.reject(conn, svc.engine, person, proposal_id, args.reason)
    return [{"proposal": done.id, "status": done.status, "task_id": done.task_id}]


async def circuit(svc: Services, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Force a provider's circuit open or closed (audited), or give it back to health."""
    actor = (await signed_in(svc, args.token, ADMIN)).actor
    if args.provider not in svc.providers:
        raise UnknownTask(f"no provider {args.provider!r}")
    state = None if args.state == "auto" else args.state
    async with svc.pool.connection() as conn:
        await health.force(conn, args.provider, state, actor, args.reason)
        return await health.report(conn, {args.provider: svc.providers[args.provider]})


async def replay(svc: Services, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Send a dead letter's job again."""
    actor = (await signed_in(svc, args.token, RESOLVER)).actor
    async with svc.pool.connection() as conn:
        job = await deadletters.replay(conn, svc.app, args.id, actor)
    return [{"dead_letter_id": args.id, "replay_job_id": job}]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service.ops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--token", help="your access token (OPS_ACCESS_TOKEN: `ps` shows no env)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("timeline").add_argument("order")
    sub.add_parser("stuck").add_argument("--grace", type=float, default=60.0)
    sub.add_parser("manual")
    resolve = sub.add_parser("resolve")
    resolve.add_argument("task", type=uuid.UUID)
    resolve.add_argument("outcome", choices=["positive", "negative"])
    resolve.add_argument("--reason", required=True)
    for verdict in ("approve", "reject"):
        settling = sub.add_parser(verdict)
        settling.add_argument("proposal", type=uuid.UUID)
        settling.add_argument("--reason", required=verdict == "reject")
    sub.add_parser("dlq")
    replay = sub.add_parser("replay")
    replay.add_argument("id", type=int)
    sub.add_parser("reconcile")
    sub.add_parser("providers")
    circuit = sub.add_parser("circuit")
    circuit.add_argument("provider")
    circuit.add_argument("state", choices=["open", "closed", "auto"])
    circuit.add_argument("--reason", required=True)
    api_keys_cli.add_parser(sub)
    config_cli.add_parser(sub)
    archive_cli.add_parser(sub)
    _global_options_anywhere(p)
    return p


def _global_options_anywhere(parser: argparse.ArgumentParser) -> None:
    """`--json` and `--token` after the subcommand too (`manual --json`): people type
    them there, and argparse alone accepts them only before it. SUPPRESS: given
    before the subcommand, a subcommand's default does not overwrite them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument(
                    "--json", action="store_true", default=argparse.SUPPRESS, help="as above"
                )
                child.add_argument("--token", default=argparse.SUPPRESS, help="as above")
                _global_options_anywhere(child)


# The environment each command needs beyond the database (which is embedded when
# DATABASE_URL is unset): a missing credential is named, not met as an HTTP error.
NEEDS = {"reconcile": ("LEDGER_TOKEN",)}
EXIT_USAGE = 2


def missing_settings(command: str) -> list[str]:
    return [name for name in NEEDS.get(command, ()) if not os.environ.get(name, "").strip()]


def main() -> None:
    args = parser().parse_args()
    if missing := missing_settings(args.command):
        print(
            f"error: {args.command} needs {' and '.join(missing)} in the environment"
            " (the ledger's bearer token; LEDGER_URL says where, by default the sandbox's)",
            file=sys.stderr,
        )
        sys.exit(EXIT_USAGE)
    try:
        sys.exit(asyncio.run(run(args)))
    except (
        httpx.HTTPError,
        deadletters.NotReplayable,
        IllegalTransition,
        UnknownTask,
        BadRequest,
        ReconcileFailed,
    ) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
