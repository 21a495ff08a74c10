"""Identities that survive a lost commit: derived from what cascade-core sent.

A withdrawal's ids leave the database: the task id is the ledger's hold key and
the provider's idempotency key and reference, and the withdrawal id is the key of
the outcome sent back to cascade-core. If they were random, a failover that lost
the submission's commit (after the API answered 201 and the first step had frozen
money and created an order) would meet cascade-core's resubmission with new ids,
a second hold and a second provider order: a double payout if both pay, and a
hold frozen forever. Derived from the order id (and, for a task, its place in the
cascade and its provider), the resubmission gets the very same ids, and the
ledger and the provider answer it as the replay it is (docs/ha.md).

Withdrawals submitted before these ids existed keep their stored random ids.
"""

from __future__ import annotations

import uuid

# Fixed for ever: changing it changes every future id (uuid5 of the project's name).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:payment-service:withdrawal")


def withdrawal_id(order_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"withdrawal\x1f{order_id}"))


def task_id(order_id: str, position: int, provider: str) -> str:
    """The unit separator cannot occur in an order id or a provider name (the API
    takes letters, digits and `._:-` only), so no two triples share a name."""
    return str(uuid.uuid5(NAMESPACE, f"task\x1f{order_id}\x1f{position}\x1f{provider}"))
