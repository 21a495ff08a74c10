"""In-memory state of the simulated payout providers, and their webhooks.

Orders live in a dict keyed by (provider, reference). Everything that mutates
it runs on the event loop without an `await` between the lookup and the
insert, so concurrent replays of one Idempotency-Key can never create twice.
Status transitions and webhook deliveries are background asyncio tasks, all
tracked so that reset and shutdown can cancel them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
import zlib
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from activities import acme as acme_signing
from activities.standard_webhooks import signed_headers
from sandbox import acme
from sandbox.config import ProviderConfig, SandboxConfig
from sandbox.market import draw
from sandbox.orders import CreateAnswer, Delivery, Order, error_body, no_order_answer
from sandbox.provider_load import ProviderLoad

log = logging.getLogger("sandbox.providers")

# behaviour -> (status the order moves to after webhook_delay_ms, send a webhook?)
# instant starts out succeeded; its follow-up only sends the webhook.
FOLLOW_UPS: dict[str, tuple[str, bool]] = {
    "instant": ("succeeded", True),
    "throttle_once": ("succeeded", True),  # after a first 429 with Retry-After
    "delayed_webhook": ("succeeded", True),
    "accept_then_fail": ("failed", True),
    "error_5xx_after_create": ("succeeded", False),
    "polling_only": ("succeeded", False),
}
# Behaviours whose create answers without making an order.
NO_ORDER = frozenset({"decline", "error_5xx", "timeout"})
ORDER_STATUSES = frozenset({"pending", "succeeded", "failed"})

WEBHOOK_RETRIES = 5
WEBHOOK_FIRST_BACKOFF_S = 0.2
WEBHOOK_TIMEOUT_S = 5.0
MAX_DELIVERY_LOG = 1000


@dataclass
class Simulator:
    config: SandboxConfig
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    orders: dict[tuple[str, str], Order] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    client: httpx.AsyncClient | None = None
    load: defaultdict[str, ProviderLoad] = field(default_factory=lambda: defaultdict(ProviderLoad))
    throttled: set[tuple[str, str]] = field(default_factory=set)
    # (provider, reference) -> the status/state its answers and webhooks show instead
    # of the order's own, sent as it is (an admin call: a value the client does not know)
    wire_states: dict[tuple[str, str], str] = field(default_factory=dict)
    clock_start: float | None = None  # the market clock starts at its first order

    def __post_init__(self) -> None:
        self.providers = dict(self.config.providers)

    async def start(self) -> None:
        self.client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S)

    async def stop(self) -> None:
        await self._cancel_tasks()
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def reset(self) -> None:
        """Forget orders, deliveries and admin changes; back to the config file."""
        await self._cancel_tasks()
        self.orders.clear()
        self.deliveries.clear()
        self.load.clear()
        self.throttled.clear()
        self.wire_states.clear()
        self.clock_start = None
        self.providers = dict(self.config.providers)

    def update(self, name: str, changes: dict[str, Any]) -> ProviderConfig:
        current = self.providers.get(name)
        updated = replace(current, **changes) if current else ProviderConfig(name=name, **changes)
        self.providers[name] = updated
        return updated

    async def create(
        self, provider: ProviderConfig, reference: str, amount: str, currency: str
    ) -> CreateAnswer:
        self.load[provider.name].create_called()
        existing = self.orders.get((provider.name, reference))
        if existing is not None:  # an idempotent replay: counted, answered with the order
            existing.creates += 1
            return CreateAnswer(200, existing.to_json())
        behaviour = provider.behaviour
        if behaviour == "throttle_once" and (provider.name, reference) not in self.throttled:
            self.throttled.add((provider.name, reference))
            self.load[provider.name].throttled += 1
            retry = {"Retry-After": "1"}
            return CreateAnswer(429, error_body("throttled", "too many requests"), retry)
        if behaviour == "market":
            return await self._market_create(provider, reference, amount, currency)
        if behaviour in NO_ORDER:
            return await no_order_answer(provider)
        status = "succeeded" if behaviour == "instant" else "pending"
        order_id = "ord_" + secrets.token_hex(8)
        order = Order(provider.name, reference, order_id, amount, currency, status)
        self.orders[(provider.name, reference)] = order
        if status == "pending":
            self.load[provider.name].opened()
        if behaviour in FOLLOW_UPS:
            self._spawn(self._follow_up(provider, order))
        if behaviour in ("error_5xx_after_create", "blackout"):
            return CreateAnswer(
                503, error_body("unavailable", "provider error (order was created)")
            )
        return CreateAnswer(201, order.to_json())

    def order_rng(self, provider: str, amount: str, currency: str) -> random.Random:
        """The generator of one order's draws: from the market seed and the order, not
        from one shared generator consumed in whatever order workers reach it. The
        demo's triples share their amount, so each policy meets the same provider
        decisions (common random numbers: the comparison's noise cancels)."""
        return random.Random(f"{self.config.market_seed}:{provider}:{amount}:{currency}")

    async def _market_create(
        self, provider: ProviderConfig, reference: str, amount: str, currency: str
    ) -> CreateAnswer:
        assert provider.market is not None
        now = time.monotonic()
        self.clock_start = now if self.clock_start is None else self.clock_start
        if provider.market.down_at(now - self.clock_start):
            return await self._outage_create(provider, reference, amount, currency)
        rng = self.order_rng(provider.name, amount, currency)
        # Where on its approval wave the order falls comes from the order too: a wall
        # clock cannot be repeated, and the same seed must give the same outcomes.
        wave_at = rng.uniform(0, provider.market.swing_period_s)
        phase = (zlib.crc32(provider.name.encode()) % 628) / 100  # each provider its own wave
        fate = draw(provider.market, rng, wave_at, phase)
        await asyncio.sleep(fate.answer_after_s)
        existing = self.orders.get((provider.name, reference))
        if existing is not None:  # a concurrent replay got here first
            existing.creates += 1
            return CreateAnswer(200, existing.to_json())
        if fate.outcome == "decline":
            return CreateAnswer(422, error_body("declined", "the provider declined the order"))
        if fate.outcome == "ambiguous_no_order":
            return CreateAnswer(503, error_body("unavailable", "provider error"))
        order = Order(
            provider.name, reference, "ord_" + secrets.token_hex(8), amount, currency, "pending"
        )
        self.orders[(provider.name, reference)] = order
        self.load[provider.name].opened()
        if fate.outcome != "never_answers":
            self._spawn(self._settle(provider, order, fate.final_status, fate.settle_after_s))
        if fate.outcome == "ambiguous_created":
            return CreateAnswer(
                503, error_body("unavailable", "provider error (order was created)")
            )
        return CreateAnswer(201, order.to_json())

    async def _outage_create(
        self, provider: ProviderConfig, reference: str, amount: str, currency: str
    ) -> CreateAnswer:
        """A bad hour (sandbox/market.py): hang until the caller gives up, or take the
        order and fail it late, or take it and never answer."""
        assert provider.market is not None
        if provider.market.outage_mode == "timeout":
            await asyncio.sleep(provider.hang_ms / 1000)
            return CreateAnswer(504, error_body("timeout", "provider did not answer in time"))
        order = Order(
            provider.name, reference, "ord_" + secrets.token_hex(8), amount, currency, "pending"
        )
        self.orders[(provider.name, reference)] = order
        self.load[provider.name].opened()
        if provider.market.outage_mode == "never_answers":
            return CreateAnswer(201, order.to_json())  # pending for good: no webhook
        after_s = provider.market.outage_fail_after_ms / 1000
        self._spawn(self._settle(provider, order, "failed", after_s))
        return CreateAnswer(201, order.to_json())

    async def _settle(
        self, provider: ProviderConfig, order: Order, final: str, after_s: float
    ) -> None:
        await asyncio.sleep(after_s)
        if order.status == "pending":
            self.load[provider.name].closed()
        order.status = final
        await self.deliver(self.providers.get(provider.name, provider), order, final)

    async def _follow_up(self, provider: ProviderConfig, order: Order) -> None:
        final, webhook = FOLLOW_UPS[provider.behaviour]
        await asyncio.sleep(provider.webhook_delay_ms / 1000)
        if order.status == "pending":
            self.load[provider.name].closed()
        order.status = final
        if webhook:
            # Sign with the provider's current secret, in case an admin rotated it.
            await self.deliver(self.providers.get(provider.name, provider), order, final)

    def order_json(self, order: Order, status: str | None = None) -> dict[str, str]:
        """The order in the reference shape, with its wire override if one is set."""
        shown = self.wire_states.get((order.provider, order.reference), status or order.status)
        return {**order.to_json(), "status": shown}

    async def deliver(
        self, provider: ProviderConfig, order: Order, status: str, webhook_id: str | None = None
    ) -> Delivery:
        """POST a signed webhook, retrying non-2xx with backoff under the same id."""
        wire = self.wire_states.get((order.provider, order.reference))
        if provider.protocol == "acme":
            webhook_id = webhook_id or "evt_" + secrets.token_hex(12)
            body = acme.webhook_body(webhook_id, {**order.to_json(), "status": status}, wire)
        else:
            webhook_id = webhook_id or "msg_" + secrets.token_hex(12)
            # Serialised once: the signature covers exactly these bytes on every attempt.
            body = json.dumps(
                {"type": "order.updated", "data": self.order_json(order, status)},
                separators=(",", ":"),
            ).encode()
        url = f"{self.config.webhook_url}/webhooks/{provider.name}"
        code: int | None = None
        backoff = WEBHOOK_FIRST_BACKOFF_S
        attempt = 0
        for attempt in range(1, WEBHOOK_RETRIES + 2):
            code = await self._post(url, provider, webhook_id, body)
            if code is not None and 200 <= code < 300:
                break
            if attempt <= WEBHOOK_RETRIES:
                await asyncio.sleep(backoff)
                backoff *= 2
        delivered = code is not None and 200 <= code < 300
        if not delivered:
            log.warning("webhook %s to %s not delivered (last %s)", webhook_id, provider.name, code)
        result = Delivery(
            provider.name, order.reference, status, webhook_id, attempt, delivered, code
        )
        self.deliveries.append(result)
        del self.deliveries[:-MAX_DELIVERY_LOG]
        return result

    async def _post(
        self, url: str, provider: ProviderConfig, webhook_id: str, body: bytes
    ) -> int | None:
        assert self.client is not None, "Simulator.start() was not awaited"
        # Timestamp per attempt, so a late retry is not refused as too old.
        now, secret = int(time.time()), provider.webhook_secret
        if provider.protocol == "acme":
            headers = acme_signing.signed_headers(secret, now, body)
        else:
            headers = signed_headers(secret, webhook_id, now, body)
        headers["content-type"] = "application/json"
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.info("webhook %s attempt failed: %s", webhook_id, type(exc).__name__)
            return None
        return response.status_code

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(_logged(coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _cancel_tasks(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()


async def _logged(coro: Coroutine[Any, Any, None]) -> None:
    # A background task's exception would otherwise surface only at GC time.
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task failed")
