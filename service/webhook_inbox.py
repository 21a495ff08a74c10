"""Provider webhooks: stored in the inbox and applied, exactly once each.

The API applies a verified webhook in the same transaction that stores it, so a
webhook costs one commit and its effect (a settlement, say) starts at once. A
webhook that cannot be applied there for an unexpected reason is stored alone
and a `webhook` job applies it later; a duplicate (same provider and webhook
id) is stored once and applied once: a second application is rolled back with
the insert that found the first.

The inbox is the shell's: its `webhook` job is a ShellJob the engine's runtime
runs (engine/jobs.py), and the provider's adapter is the only parser of a body
(`translate`, built from the adapters in service/wiring.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import psycopg

from engine import commit_hooks
from engine.contracts import Origin, ShellJob, UnknownTask
from engine.journal import Conn
from engine.rows import DbRow, JsonObject
from engine.steps import Runtime
from service import withdrawal_metrics as metrics
from workflows.core import Event, IllegalTransition

# A stored inbox row -> (task id, event): the provider's adapter parses the body.
Translate = Callable[[DbRow], tuple[str, Event]]

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


_TASK_OF = (
    "SELECT reference::uuid::text AS task_id FROM webhook_inbox"
    " WHERE id = %s AND reference ~ '^[0-9a-f-]{36}$'"
)


class _Duplicate(Exception):
    """Raised to roll back what applying a webhook seen before did."""


class WebhookInbox:
    """Provider webhooks in, exactly once each; `translate` parses a stored row."""

    def __init__(self, translate: Translate) -> None:
        self.translate = translate

    def job(self) -> ShellJob:
        """The `webhook(inbox_id)` job: a stored webhook the API could not apply."""
        return ShellJob("webhooks", self._apply_job, task_of=self._task_of)

    async def accept(
        self, runtime: Runtime, provider: str, webhook_id: str, reference: str, body: str
    ) -> str | None:
        return await accept_webhook(runtime, self.translate, provider, webhook_id, reference, body)

    async def _apply_job(self, runtime: Runtime, inbox_id: int) -> str:
        return await apply_webhook(runtime, self.translate, inbox_id)

    @staticmethod
    async def _task_of(conn: Conn, kwargs: JsonObject) -> str | None:
        row = await (await conn.execute(_TASK_OF, (kwargs.get("inbox_id"),))).fetchone()
        return str(row["task_id"]) if row else None


async def accept_webhook(
    runtime: Runtime,
    translate: Translate,
    provider: str,
    webhook_id: str,
    reference: str,
    body: str,
) -> str | None:
    """Apply a verified webhook and store it with its outcome, in one transaction.
    Returns the outcome, "deferred" when a job will apply it, or None for a
    duplicate (its second application is rolled back with the insert that failed)."""
    inbox = {"webhook_id": webhook_id, "provider": provider, "body": json.loads(body)}
    try:
        with commit_hooks.transaction_scope():
            async with runtime.pool.connection() as conn, conn.transaction():
                outcome = await _apply_inbox_row(runtime, translate, conn, inbox)
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
        await runtime.jobs.defer_job(conn, "webhook", inbox_id=int(row["id"]))
    return "deferred"


async def apply_webhook(runtime: Runtime, translate: Translate, inbox_id: int) -> str:
    """Apply a stored webhook exactly once; its outcome is written on the inbox row."""
    with commit_hooks.transaction_scope():  # the engine's observations count on our commit
        async with runtime.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT * FROM webhook_inbox WHERE id = %s FOR UPDATE", (inbox_id,)
            )
            row = await cur.fetchone()
            if row is None or row["processed_at"] is not None:
                return "done"
            outcome = await _apply_inbox_row(runtime, translate, conn, row)
            await conn.execute(_DONE, (outcome, inbox_id))
            return outcome


async def _apply_inbox_row(runtime: Runtime, translate: Translate, conn: Conn, row: DbRow) -> str:
    outcome = await _inbox_outcome(runtime, translate, conn, row)
    provider = str(row["provider"])
    commit_hooks.on_commit(lambda: metrics.WEBHOOK_OUTCOMES.labels(provider, outcome).inc())
    if outcome in _REFUSALS:
        log.warning("webhook %s from %s refused: %s", row["webhook_id"], provider, outcome)
    return outcome


async def _inbox_outcome(runtime: Runtime, translate: Translate, conn: Conn, row: DbRow) -> str:
    try:
        task_id, event = translate(row)
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
