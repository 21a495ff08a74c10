"""Provider webhooks: stored in the inbox and applied, exactly once each.

The API applies a verified webhook in the same transaction that stores it, so a
webhook costs one commit and its effect (a settlement, say) starts at once. A
webhook that cannot be applied there for an unexpected reason is stored alone
and a `webhook` job applies it later; a duplicate (same provider and webhook
id) is stored once and applied once: a second application is rolled back with
the insert that found the first.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import psycopg

from engine import commit_hooks, metrics
from engine.contracts import Origin, UnknownTask
from engine.journal import Conn
from workflows.core import IllegalTransition

if TYPE_CHECKING:
    from engine.steps import Runtime

log = logging.getLogger("payment.webhooks")

_STORE = """
INSERT INTO webhook_inbox (provider, webhook_id, reference, body)
VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (provider, webhook_id) DO NOTHING
RETURNING id
"""
_STORE_APPLIED = """
INSERT INTO webhook_inbox (provider, webhook_id, reference, body, processed_at, outcome)
VALUES (%s, %s, %s, %s::jsonb, now(), %s) ON CONFLICT (provider, webhook_id) DO NOTHING
RETURNING id
"""
_DONE = "UPDATE webhook_inbox SET processed_at = now(), outcome = %s WHERE id = %s"
# Alerts that mean the webhook was refused, in the order they are reported.
_REFUSALS = ("wrong_provider", "provider_conflict")


class _Duplicate(Exception):
    """Raised to roll back what applying a webhook seen before did."""


async def accept_webhook(
    runtime: Runtime, provider: str, webhook_id: str, reference: str, body: str
) -> str | None:
    """Apply a verified webhook and store it with its outcome, in one transaction.
    Returns the outcome, "deferred" when a job will apply it, or None for a
    duplicate (its second application is rolled back with the insert that failed)."""
    inbox = {"id": webhook_id, "provider": provider, "body": json.loads(body)}
    try:
        with commit_hooks.transaction_scope():
            async with runtime.pool.connection() as conn, conn.transaction():
                outcome = await _apply_inbox_row(runtime, conn, inbox)
                values = (provider, webhook_id, reference, body, outcome)
                if await (await conn.execute(_STORE_APPLIED, values)).fetchone() is None:
                    raise _Duplicate
                return outcome
    except _Duplicate:
        return None
    except psycopg.OperationalError:
        raise  # the database is away: nothing is stored, the provider sends it again
    except Exception:
        log.exception("webhook %s from %s: applying it failed; a job retries", webhook_id, provider)
    async with runtime.pool.connection() as conn, conn.transaction():
        row = await (await conn.execute(_STORE, (provider, webhook_id, reference, body))).fetchone()
        if row is None:
            return None
        await runtime.scheduler.defer_webhook(conn, int(row["id"]))
    return "deferred"


async def apply_webhook(runtime: Runtime, inbox_id: int) -> str:
    """Apply a stored webhook exactly once; its outcome is written on the inbox row."""
    with commit_hooks.transaction_scope():  # the engine's observations count on our commit
        async with runtime.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT * FROM webhook_inbox WHERE id = %s FOR UPDATE", (inbox_id,)
            )
            row = await cur.fetchone()
            if row is None or row["processed_at"] is not None:
                return "done"
            outcome = await _apply_inbox_row(runtime, conn, row)
            await conn.execute(_DONE, (outcome, inbox_id))
            return outcome


async def _apply_inbox_row(runtime: Runtime, conn: Conn, row: dict[str, Any]) -> str:
    outcome = await _inbox_outcome(runtime, conn, row)
    provider = str(row["provider"])
    commit_hooks.on_commit(lambda: metrics.WEBHOOK_OUTCOMES.labels(provider, outcome).inc())
    if outcome in _REFUSALS:
        log.warning("webhook %s from %s refused: %s", row["id"], provider, outcome)
    return outcome


async def _inbox_outcome(runtime: Runtime, conn: Conn, row: dict[str, Any]) -> str:
    try:
        task_id, event = runtime.translate_webhook(row)
        origin = Origin(actor=f"provider:{row['provider']}")
        applied = await runtime.engine.apply(conn, task_id, event, origin=origin)
    except (UnknownTask, ValueError):
        return "unknown_task"
    except IllegalTransition:
        return "not_applicable"
    refused = [kind for kind in _REFUSALS if kind in applied.alerts]
    if refused:
        return refused[0]
    return "applied" if applied.changed else "ignored"
