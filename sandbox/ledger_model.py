"""The sandbox ledger's records and its errors, with no I/O: a hold as stored (and
as the API shows it), the body of a freeze (and the digest that makes a replay
the same request), and the protocol error every endpoint answers with.
sandbox/ledger_store.py keeps them in PostgreSQL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workflows.money import format_minor

Row = tuple[Any, ...]


class LedgerError(Exception):
    """A definitive protocol error: HTTP status plus machine code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Hold:
    key: str
    provider: str | None
    currency: str | None
    amount_minor: int | None
    status: str
    request_hash: str | None
    created_at: datetime
    updated_at: datetime
    order_id: str | None

    @classmethod
    def from_row(cls, row: Row) -> Hold:
        return cls(*row)

    def to_json(self) -> dict[str, Any]:
        amount = None
        if self.amount_minor is not None and self.currency is not None:
            amount = format_minor(self.amount_minor, self.currency)
        return {
            "key": self.key,
            "provider": self.provider,
            "currency": self.currency,
            "amount": amount,
            "status": self.status,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "order_id": self.order_id,
        }


@dataclass(frozen=True)
class FreezeRequest:
    provider: str
    currency: str
    amount_minor: int
    # Stored with the hold, but no part of its idempotency: it names the money's
    # owner and does not move any, and a replay by a client that does not send it
    # is the same request.
    order_id: str | None = None

    def digest(self) -> str:
        # Hash the normalised request, so "10.0" and "10.00" are the same body.
        text = f"{self.provider}\x00{self.currency}\x00{self.amount_minor}"
        return hashlib.sha256(text.encode()).hexdigest()


def iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")
