"""The simulated providers' orders, webhook deliveries and create answers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sandbox.config import ProviderConfig


@dataclass
class Order:
    provider: str
    reference: str
    id: str
    amount: str
    currency: str
    status: str
    creates: int = 1  # create calls for this reference: the first, then every replay

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "reference": self.reference, "status": self.status}

    def admin_json(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "reference": self.reference,
            "id": self.id,
            "status": self.status,
            "creates": self.creates,
            "amount": self.amount,
            "currency": self.currency,
        }


@dataclass(frozen=True)
class Delivery:
    provider: str
    reference: str
    status: str
    webhook_id: str
    attempts: int
    delivered: bool
    last_status_code: int | None

    def to_json(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "reference": self.reference,
            "status": self.status,
            "webhook_id": self.webhook_id,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "last_status_code": self.last_status_code,
        }


@dataclass(frozen=True)
class CreateAnswer:
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


async def no_order_answer(provider: ProviderConfig) -> CreateAnswer:
    if provider.behaviour == "timeout":
        # The client is expected to give up first; if it does not, a 504 says
        # the same thing: nothing was ordered.
        await asyncio.sleep(provider.hang_ms / 1000)
        return CreateAnswer(504, error_body("timeout", "provider did not answer in time"))
    if provider.behaviour == "decline":
        return CreateAnswer(422, error_body("declined", "the provider declined the order"))
    return CreateAnswer(503, error_body("unavailable", "provider error"))


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
