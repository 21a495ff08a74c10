"""`python -m service.ops keys create|list|rotate|revoke`: API keys from the command
line, straight against PostgreSQL, for an admin signed in like the ops API's
(service/cli_identity.py: OPS_ACCESS_TOKEN or --token), who is the audit's actor.
`create` and `rotate` print the new key once: only its digest is kept."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from service import api_key_store as store
from service.api_key_models import KeyCreation, KeyRevocation, KeyRotation
from service.api_keys import SCOPES
from service.cli_identity import signed_in
from service.models import BadRequest
from service.principals import ADMIN
from service.wiring import Services


def add_parser(sub: Any) -> None:
    """The `keys` command and its subcommands, on the ops command line's parser."""
    keys = sub.add_parser("keys", help="API keys: create, list, rotate, revoke")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key, printed once")
    create.add_argument("--client", required=True)
    create.add_argument("--scope", action="append", choices=SCOPES, required=True)
    create.add_argument("--merchant", action="append", help="only these merchants (repeat)")
    create.add_argument("--expires-in-s", type=int)
    create.add_argument("--rate-per-s", type=float)
    create.add_argument("--burst", type=int)
    create.add_argument("--max-in-flight", type=int)
    actions.add_parser("list")
    rotate = actions.add_parser("rotate", help="a new key; the old one lasts --grace-s more")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace-s", type=int)
    rotate.add_argument("--expires-in-s", type=int)
    revoke = actions.add_parser("revoke", help="refused by every API process from now on")
    revoke.add_argument("key_id")
    revoke.add_argument("--reason", required=True)


async def run(svc: Services, args: argparse.Namespace) -> list[dict[str, Any]]:
    """What `keys <action>` prints; a bad value is a SystemExit that says which."""
    actor = (await signed_in(svc, args.token, ADMIN)).actor
    try:
        async with svc.pool.connection() as conn:
            match args.action:
                case "create":
                    secret, row = await store.create(conn, _creation(args), actor)
                    return [{**row, "secret": secret}]
                case "rotate":
                    change = KeyRotation(grace_s=args.grace_s, expires_in_s=args.expires_in_s)
                    grace_s = svc.settings.api_key_rotation_grace_s
                    secret, new, _ = await store.rotate(conn, args.key_id, change, actor, grace_s)
                    return [{**new, "secret": secret}]
                case "revoke":
                    why = KeyRevocation(reason=args.reason)
                    return [await store.revoke(conn, args.key_id, why, actor)]
            return await store.list_keys(conn)
    except ValidationError as exc:
        raise SystemExit(f"error: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    except BadRequest as exc:  # no such key, or not in a state for it
        raise SystemExit(f"error: {exc.message}") from None


def _creation(args: argparse.Namespace) -> KeyCreation:
    return KeyCreation(
        client=args.client,
        scopes=args.scope,
        merchants=args.merchant,
        expires_in_s=args.expires_in_s,
        rate_per_s=args.rate_per_s,
        burst=args.burst,
        max_in_flight=args.max_in_flight,
    )
