"""Provider webhooks: stored in the inbox and applied, exactly once each.

The API applies a verified webhook in the same transaction that stores it, so a
webhook costs one commit and its effect (a settlement, say) starts at once. A
webhook that cannot be applied there for an unexpected reason stays stored and
a `webhook` job applies it later; a duplicate (same provider and webhook id) is
stored once and applied once.
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
    from engine.jobs import Runtime

log = logging.getLogger("payment.webhooks")

_STORE = """
INSERT INTO webhook_inbox (provider, webhook_id, reference, body)
VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (provider, webhook_id) DO NOTHING
RETURNING id
"""
_DONE = "UPDATE webhook_inbox SET processed_at = now(), outcome = %s WHERE id = %s"
# Alerts that mean the webhook was refused, in the order they are reported.
_REFUSALS = ("wrong_provider", "provider_conflict")


async def accept_webhook(
    runtime: Runtime, provider: str, webhook_id: str, reference: str, body: str
) -> str | None:
    """Store a verified webhook and apply it, in one transaction. Returns what applying
    it did, "deferred" when a job will, or None for a duplicate."""
    with metrics.transaction_scope():
        async with runtime.pool.connection() as conn, conn.transaction():
            stored = await conn.execute(_STORE, (provider, webhook_id, reference, body))
            row = await stored.fetchone()
            if row is None:
                return None
            inbox = {"id": row["id"], "provider": provider, "body": json.loads(body)}
            try:
                with commit_hooks.savepoint():
                    async with conn.transaction():
                        outcome = await _apply_inbox_row(runtime, conn, inbox)
            except psycopg.OperationalError:
                raise  # the database is away: nothing is stored, the provider retries
            except Exception:
                log.exception(
                    "webhook %s from %s: applying it failed; a job retries", row["id"], provider
                )
                await runtime.scheduler.defer_webhook(conn, int(row["id"]))
                return "deferred"
            await conn.execute(_DONE, (outcome, row["id"]))
            return outcome


async def apply_webhook(runtime: Runtime, inbox_id: int) -> str:
    """Apply a stored webhook exactly once; its outcome is written on the inbox row."""
    with metrics.transaction_scope():  # the engine's observations count on our commit
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
    metrics.on_commit(lambda: metrics.WEBHOOK_OUTCOMES.labels(provider, outcome).inc())
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
