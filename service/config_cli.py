"""`python -m service.ops config ...`: the live configuration from the command line,
as the ops API has it (service/config_api.py): reads for anyone with database
access, changes as a signed-in admin (OPS_ACCESS_TOKEN), each with a reason.

config show                         the documents in force (credentials as fingerprints)
config history rollout|providers [--limit N]
config rollout [--percent N] [--health-routing on|off] [--merchant ID=POLICY ...]
               [--forget-merchant ID ...] --reason TEXT
config provider NAME --file SETTINGS.json|.toml --reason TEXT
                                    add or replace one provider (credentials left out: kept)
config remove-provider NAME --reason TEXT
config restore COHORT --reason TEXT
                                    a cohort moved back gets its own policy again (new
                                    withdrawals; service/cohort_guard.py)
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

from engine.journal import Conn
from service import config_store
from service.cli_identity import signed_in
from service.cohort_guard import NotMovedBack, restore
from service.config_store import DOCUMENTS
from service.config_views import history_view, version_view
from service.principals import ADMIN
from service.provider_documents import parse_provider
from service.rollout import Policy, RolloutConfig
from service.wiring import Services


def add_parser(sub: Any) -> None:
    config = sub.add_parser("config", help="the live configuration (rollout gate, providers)")
    verbs = config.add_subparsers(dest="verb", required=True)
    verbs.add_parser("show")
    history = verbs.add_parser("history")
    history.add_argument("document", choices=DOCUMENTS)
    history.add_argument("--limit", type=int, default=20)
    rollout = verbs.add_parser("rollout")
    rollout.add_argument("--percent", type=int)
    rollout.add_argument("--health-routing", choices=["on", "off"])
    rollout.add_argument("--merchant", action="append", default=[], metavar="ID=POLICY")
    rollout.add_argument("--forget-merchant", action="append", default=[], metavar="ID")
    provider = verbs.add_parser("provider")
    provider.add_argument("name")
    provider.add_argument("--file", type=Path, required=True)
    remove = verbs.add_parser("remove-provider")
    remove.add_argument("name")
    restore = verbs.add_parser("restore")
    restore.add_argument("cohort", choices=[p.value for p in Policy])
    for changing in (rollout, provider, remove, restore):
        changing.add_argument("--reason", required=True)


async def run(svc: Services, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.verb in ("show", "history"):
        return await _read(svc, args)
    person = await signed_in(svc, args.token, ADMIN)
    async with svc.pool.connection() as conn:
        match args.verb:
            case "rollout":
                version = await svc.live.change_rollout(
                    conn, lambda c: _rollout_edit(c, args), actor=person.actor, reason=args.reason
                )
                return [{"name": "rollout", "version": version}]
            case "restore":
                return [await _restore(svc, conn, person.actor, args)]
            case "provider":
                config = parse_provider(
                    args.name, _settings(args.file), svc.providers.get(args.name)
                )
                version = await svc.live.change_providers(
                    conn, lambda p: {**p, args.name: config}, actor=person.actor, reason=args.reason
                )
            case _:
                if args.name not in svc.providers:
                    raise SystemExit(f"error: no provider {args.name!r}")
                version = await svc.live.change_providers(
                    conn,
                    lambda p: {n: c for n, c in p.items() if n != args.name},
                    actor=person.actor,
                    reason=args.reason,
                )
    return [{"name": "providers", "version": version}]


async def _read(svc: Services, args: argparse.Namespace) -> list[dict[str, Any]]:
    async with svc.pool.connection() as conn:
        if args.verb == "show":
            return [
                version_view((await config_store.history(conn, svc.live.scope, name, 1))[0])
                for name in DOCUMENTS
            ]
        found = await config_store.history(conn, svc.live.scope, args.document, args.limit + 1)
    before_oldest = found[args.limit] if len(found) > args.limit else None
    return history_view(found[: args.limit], before_oldest)


async def _restore(
    svc: Services, conn: Conn, actor: str, args: argparse.Namespace
) -> dict[str, Any]:
    try:
        version = await restore(conn, svc.live, Policy(args.cohort), actor, args.reason)
    except NotMovedBack as exc:
        raise SystemExit(f"error: {exc}") from None
    return {"name": "rollout", "version": version}


def _rollout_edit(config: RolloutConfig, args: argparse.Namespace) -> RolloutConfig:
    merchants = dict(config.merchants)
    for pair in args.merchant:
        merchant, _, policy = pair.partition("=")
        merchants[merchant] = Policy(policy)
    for merchant in args.forget_merchant:
        merchants.pop(merchant, None)
    update: dict[str, Any] = {"merchants": merchants}
    if args.percent is not None:
        update["cascade_percent"] = args.percent
    if args.health_routing is not None:
        update["health_routing"] = args.health_routing == "on"
    return RolloutConfig.model_validate({**config.model_dump(), **update})


def _settings(path: Path) -> dict[str, Any]:
    text = path.read_text()
    loaded = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(loaded, dict):
        raise SystemExit("error: the settings file holds one provider's settings, a table")
    return loaded
