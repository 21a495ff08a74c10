"""What the soak checks once the system is quiet, from the outside.

Each check reads the sandbox ledger's holds and operation log, the sandbox
providers' orders, the JetStream stream and the service's tables, and compares
them. None of them uses the service's own verdict views.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import nats
import psycopg
from nats.js.errors import NotFoundError

from sandbox.client import StackClient, expected_ledger_ops
from workflows.money import parse_amount

TERMINAL = {"SUCCEEDED", "SKIPPED", "FAILED", "CANCELLED"}


@dataclass(frozen=True)
class Check:
    name: str
    value: int | str
    ok: bool


async def _stream_messages(url: str) -> list[dict[str, Any]]:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        try:
            info = await js.stream_info("ORDERS")
        except NotFoundError:
            return []
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("ORDERS", seq)
            headers = msg.headers or {}
            messages.append(
                {
                    "seq": seq,
                    "subject": msg.subject,
                    "id": headers["Nats-Msg-Id"],
                    "body": json.loads(msg.data or b"{}"),
                }
            )
        return messages
    finally:
        await client.close()


def stream_messages(nats_url: str) -> list[dict[str, Any]]:
    """Every message in the ORDERS stream, with its Nats-Msg-Id (the outbox row's event_id)."""
    return asyncio.run(_stream_messages(nats_url))


def _rows(url: str, query: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(query).fetchall()


def money_checks(client: StackClient, url: str) -> list[Check]:
    tasks = _rows(
        url,
        "SELECT t.id::text AS id, t.queue_id::text AS queue_id, t.provider, t.status::text"
        " AS status, t.funds::text AS funds, t.activity_token, q.amount_minor, q.currency"
        " FROM order_tasks t JOIN order_queues q ON q.id = t.queue_id",
    )
    ops = client.ledger_ops()
    holds = {h["key"]: h for h in client.sandbox.get("/ledger/v1/holds").json()["holds"]}
    paid_orders = [o for o in client.provider_orders().values() if o["status"] == "succeeded"]
    queue_of = {t["id"]: t["queue_id"] for t in tasks}
    commits = Counter(queue_of[k] for k, seen in ops.items() if "commit" in seen and k in queue_of)
    paid = Counter(queue_of[o["reference"]] for o in paid_orders if o["reference"] in queue_of)
    double = sum(n > 1 for n in commits.values()) + sum(n > 1 for n in paid.values())
    frozen_on_final = sum(
        t["status"] in TERMINAL and holds.get(t["id"], {}).get("status") == "frozen" for t in tasks
    )
    out_of_step = sum(
        ops.get(t["id"], []) != expected_ledger_ops(t, "freeze" in ops.get(t["id"], []))
        for t in tasks
    )
    committed: defaultdict[str, int] = defaultdict(int)
    for hold in holds.values():
        if hold["status"] == "committed":
            committed[hold["provider"]] += parse_amount(hold["amount"], hold["currency"])
    succeeded: defaultdict[str, int] = defaultdict(int)
    for t in tasks:
        if t["status"] == "SUCCEEDED":
            succeeded[t["provider"]] += int(t["amount_minor"])
    unbalanced = [p for p in set(committed) | set(succeeded) if committed[p] != succeeded[p]]
    return [
        Check("double payouts", double, double == 0),
        Check("holds frozen on a final task", frozen_on_final, frozen_on_final == 0),
        Check("holds out of step with the task's funds", out_of_step, out_of_step == 0),
        Check(
            "providers whose ledger sum differs",
            ", ".join(sorted(unbalanced)) or 0,
            not unbalanced,
        ),
    ]


def liveness_checks(url: str) -> list[Check]:
    open_rows = _rows(
        url,
        "SELECT q.order_id FROM order_queues q WHERE q.status = 'ACTIVE' AND NOT EXISTS"
        " (SELECT 1 FROM order_tasks t WHERE t.queue_id = q.id AND t.status = 'MANUAL_CHECK'"
        "  AND t.target IS NULL)",
    )
    return [Check("withdrawals open without a manual check", len(open_rows), not open_rows)]


def audit_replay(url: str) -> Check:
    """Replaying each task's transitions from PENDING must end in its current state."""
    events = _rows(
        url,
        "SELECT task_id::text AS task_id, from_state, to_state FROM order_task_events"
        " WHERE task_id IS NOT NULL AND from_state IS NOT NULL ORDER BY id",
    )
    tasks = {
        r["id"]: r["status"] for r in _rows(url, "SELECT id::text, status::text FROM order_tasks")
    }
    replayed: dict[str, str] = {}
    broken = set()
    for event in events:
        state = replayed.get(event["task_id"], "PENDING")
        if event["from_state"] != state:
            broken.add(event["task_id"])
        replayed[event["task_id"]] = event["to_state"]
    broken |= {task for task, status in tasks.items() if replayed.get(task, "PENDING") != status}
    share = 100.0 * (len(tasks) - len(broken)) / max(len(tasks), 1)
    return Check("audit replay matches every task", f"{share:.1f}%", not broken)


def audit_references(url: str) -> Check:
    """Every audit row names a withdrawal and (if any) a task that exist, in the same
    withdrawal: the audit trail has no foreign keys (migration 0017), the journal's
    one transaction with the rows it locks is what keeps this."""
    orphans = _rows(
        url,
        "SELECT e.id FROM order_task_events e"
        " WHERE NOT EXISTS (SELECT 1 FROM order_queues q WHERE q.id = e.queue_id)"
        "    OR (e.task_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM order_tasks t"
        "        WHERE t.id = e.task_id AND t.queue_id = e.queue_id))",
    )
    return Check("audit rows naming a missing withdrawal or task", len(orphans), not orphans)


def outbox_checks(url: str, nats_url: str) -> list[Check]:
    """Each event the database holds must be in the stream once, as written. An event
    whose id the stream holds with another body was dropped by JetStream as a
    duplicate of something else: what reusing a rewound sequence as the id does."""
    rows = _rows(url, "SELECT event_id::text AS id, subject, payload FROM outbox")
    unpublished = _rows(url, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")[0]["n"]
    messages = stream_messages(nats_url)
    published = Counter(m["id"] for m in messages)
    sent = {m["id"]: m for m in messages}
    twice = sum(n > 1 for n in published.values())
    missing = sum(r["id"] not in sent for r in rows)
    wrong = sum(
        r["id"] in sent
        and (sent[r["id"]]["subject"], _without_id(sent[r["id"]]["body"]))
        != (r["subject"], r["payload"])
        for r in rows
    )
    return [
        Check("outbox events never published", missing + unpublished, missing + unpublished == 0),
        Check("events published more than once", twice, twice == 0),
        Check("events dropped as another's duplicate", wrong, wrong == 0),
    ]


def _without_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "event_id"}


def manual_checks_by_cause(client: StackClient, url: str) -> dict[str, int]:
    """Each task waiting for a person, by its reason and what its provider holds: an
    order still pending there is a provider that never answered (a person is right);
    one already settled is a manual check the service might have avoided."""
    rows = _rows(
        url,
        "SELECT id::text AS id, coalesce(last_reason, '?') AS reason FROM order_tasks"
        " WHERE status = 'MANUAL_CHECK'",
    )
    orders = client.provider_orders()
    causes: Counter[str] = Counter()
    for row in rows:
        held = orders.get(row["id"], {}).get("status", "no order")
        causes[f"{row['reason']}, provider order {held}"] += 1
    return dict(causes.most_common())


def outcome_counts(url: str) -> dict[str, int]:
    rows = _rows(
        url,
        "SELECT CASE WHEN q.status <> 'ACTIVE' THEN lower(q.status::text)"
        " WHEN EXISTS (SELECT 1 FROM order_tasks t WHERE t.queue_id = q.id"
        "   AND t.status = 'MANUAL_CHECK') THEN 'waiting for a person' ELSE 'open' END AS outcome,"
        " count(*) AS n FROM order_queues q GROUP BY 1 ORDER BY 1",
    )
    return {r["outcome"]: int(r["n"]) for r in rows}
