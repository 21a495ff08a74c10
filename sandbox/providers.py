"""Provider protocols under `/providers/{name}` plus the sandbox admin calls.

See docs/protocols.md. Behaviour and state live in `provider_sim.Simulator`;
this module only authenticates, validates and maps answers to HTTP, in the
provider's `protocol`: the reference one (`/v1/orders`) or Acme's (`/v2/payouts`,
sandbox/acme.py). A provider answers only on its own protocol's routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox import acme
from sandbox.config import (
    BEHAVIOURS,
    DEFAULT_PROTOCOL,
    MAX_DELAY_MS,
    PROVIDER_NAME,
    ConfigError,
    ProviderConfig,
    check_protocol,
    check_secret,
)
from sandbox.provider_sim import ORDER_STATUSES, Simulator
from sandbox.web import BadBody, bearer_ok, error, is_int, json_object, unauthorized
from workflows.money import InvalidAmount, format_minor, parse_amount

Handler = Callable[[Request], Awaitable[Response]]
MAX_REFERENCE_LENGTH = 200
MAX_WIRE_STATE_LENGTH = 32
WEBHOOK_ID_PREFIX = {"http": "msg_", "acme": "evt_"}


class ProviderApi:
    def __init__(self, sim: Simulator, admin_token: str) -> None:
        self.sim = sim
        self.admin_token = admin_token

    def routes(self) -> list[BaseRoute]:
        admin = self._admin
        return [
            Route("/_admin/orders", admin(self.list_orders), methods=["GET"]),
            Route("/_admin/webhooks", admin(self.list_webhooks), methods=["GET"]),
            Route("/_admin/reset", admin(self.reset), methods=["POST"]),
            Route("/_admin/{name}/webhook", admin(self.send_webhook), methods=["POST"]),
            Route("/_admin/{name}/load", admin(self.provider_load), methods=["GET"]),
            Route("/_admin/{name}/orders/{reference}", admin(self.patch_order), methods=["PATCH"]),
            Route("/_admin/{name}", admin(self.put_provider), methods=["PUT"]),
            Route("/{name}/v1/orders", self.create_order, methods=["POST"]),
            Route("/{name}/v1/orders/{reference}", self.get_order, methods=["GET"]),
            Route("/{name}/v2/payouts", self.acme_create, methods=["POST"]),
            Route("/{name}/v2/payouts/{reference}", self.acme_get, methods=["GET"]),
        ]

    def _provider(self, request: Request) -> ProviderConfig | Response:
        """The addressed reference-protocol provider if it exists and the api key matches."""
        provider = self.sim.providers.get(request.path_params["name"])
        if provider is None or provider.protocol != "http":
            return error(404, "not_found", "unknown provider")
        if not bearer_ok(request, provider.api_key):
            return unauthorized()
        return provider

    def _acme_provider(self, request: Request) -> ProviderConfig | Response:
        """The addressed Acme provider if it exists and its `X-Acme-Key` matches."""
        provider = self.sim.providers.get(request.path_params["name"])
        if provider is None or provider.protocol != "acme":
            return acme.error(404, "not_found", "unknown provider")
        if not acme.key_ok(request, provider.api_key):
            return acme.error(401, "unauthorized", "missing or wrong X-Acme-Key")
        return provider

    # -- provider protocol ------------------------------------------------

    async def create_order(self, request: Request) -> Response:
        provider = self._provider(request)
        if isinstance(provider, Response):
            return provider
        key = request.headers.get("idempotency-key", "")
        if not key:
            return error(400, "missing_idempotency_key", "Idempotency-Key header is required")
        try:
            body = await json_object(request)
            reference, amount, currency = _order_fields(body)
        except (BadBody, InvalidAmount) as exc:
            return error(400, "invalid_request", str(exc))
        if reference != key:
            return error(400, "idempotency_key_mismatch", "Idempotency-Key must equal reference")
        answer = await self.sim.create(provider, reference, amount, currency)
        return JSONResponse(answer.body, status_code=answer.status_code, headers=answer.headers)

    async def get_order(self, request: Request) -> Response:
        provider = self._provider(request)
        if isinstance(provider, Response):
            return provider
        if provider.behaviour == "blackout":
            return error(503, "unavailable", "provider status is unavailable")
        order = self.sim.orders.get((provider.name, request.path_params["reference"]))
        if order is None:
            return error(404, "not_found", "no order for this reference")
        return JSONResponse(self.sim.order_json(order))

    # -- Acme's protocol (sandbox/acme.py) ---------------------------------

    async def acme_create(self, request: Request) -> Response:
        """Idempotent on `merchant_reference`: a replay answers 200 with the order."""
        provider = self._acme_provider(request)
        if isinstance(provider, Response):
            return provider
        try:
            reference, amount, currency = acme.create_fields(await json_object(request))
        except (BadBody, InvalidAmount) as exc:
            return acme.error(400, "invalid_request", str(exc))
        answer = await self.sim.create(provider, reference, amount, currency)
        if "error" in answer.body:
            body = acme.from_reference_error(answer.body)
        else:
            body = acme.order(answer.body)
        return JSONResponse(body, status_code=answer.status_code, headers=answer.headers)

    async def acme_get(self, request: Request) -> Response:
        provider = self._acme_provider(request)
        if isinstance(provider, Response):
            return provider
        if provider.behaviour == "blackout":
            return acme.error(503, "unavailable", "provider status is unavailable")
        order = self.sim.orders.get((provider.name, request.path_params["reference"]))
        if order is None:
            return acme.error(404, "not_found", "no payout for this merchant_reference")
        wire = self.sim.wire_states.get((order.provider, order.reference))
        return JSONResponse(acme.order(order.to_json(), wire))

    # -- admin ------------------------------------------------------------

    def _admin(self, handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            if not bearer_ok(request, self.admin_token):
                return unauthorized()
            try:
                return await handler(request)
            except (BadBody, ConfigError) as exc:
                return error(422, "invalid_request", str(exc))

        return wrapped

    async def list_orders(self, request: Request) -> Response:
        reference = request.query_params.get("reference")
        provider = request.query_params.get("provider")
        orders = [
            order.admin_json()
            for order in self.sim.orders.values()
            if (reference is None or order.reference == reference)
            and (provider is None or order.provider == provider)
        ]
        return JSONResponse({"orders": orders})

    async def list_webhooks(self, request: Request) -> Response:
        return JSONResponse({"webhooks": [d.to_json() for d in self.sim.deliveries]})

    async def provider_load(self, request: Request) -> Response:
        return JSONResponse(self.sim.load[request.path_params["name"]].to_json())

    async def reset(self, request: Request) -> Response:
        await self.sim.reset()
        return JSONResponse({"reset": True})

    async def put_provider(self, request: Request) -> Response:
        name = request.path_params["name"]
        if PROVIDER_NAME.fullmatch(name) is None:
            return error(422, "invalid_request", f"name must match {PROVIDER_NAME.pattern}")
        changes = _provider_changes(await json_object(request))
        if name not in self.sim.providers and not {"api_key", "webhook_secret"} <= changes.keys():
            return error(422, "invalid_request", "a new provider needs api_key and webhook_secret")
        provider = self.sim.update(name, changes)
        shown = {
            "name": provider.name,
            "behaviour": provider.behaviour,
            "webhook_delay_ms": provider.webhook_delay_ms,
            "hang_ms": provider.hang_ms,
        }
        if provider.protocol != DEFAULT_PROTOCOL:
            shown["protocol"] = provider.protocol
        return JSONResponse(shown)

    async def patch_order(self, request: Request) -> Response:
        """Misbehave on purpose: give an order another id, as a confused provider might,
        and/or (`wire_state`) show a status or state the client does not know in the
        order's answers and webhooks (null: its own again)."""
        key = (request.path_params["name"], request.path_params["reference"])
        order = self.sim.orders.get(key)
        if order is None:
            return error(404, "not_found", "no order for this reference")
        body = await json_object(request)
        if "id" not in body and "wire_state" not in body:
            return error(422, "invalid_request", "give id and/or wire_state")
        new_id = body.get("id", order.id)
        if not isinstance(new_id, str) or not 0 < len(new_id) <= 64:
            return error(422, "invalid_request", "id must be a string of 1..64 characters")
        wire = body.get("wire_state")
        limit = MAX_WIRE_STATE_LENGTH
        if wire is not None and not (isinstance(wire, str) and 0 < len(wire) <= limit):
            message = f"wire_state must be null or a string of 1..{limit} characters"
            return error(422, "invalid_request", message)
        order.id = new_id
        if "wire_state" in body:
            if wire is None:
                self.sim.wire_states.pop(key, None)
            else:
                self.sim.wire_states[key] = wire
        return JSONResponse({**order.admin_json(), "wire_state": self.sim.wire_states.get(key)})

    async def send_webhook(self, request: Request) -> Response:
        """(Re)send a signed webhook for an existing order now; waits for the delivery."""
        provider = self.sim.providers.get(request.path_params["name"])
        if provider is None:
            return error(404, "not_found", "unknown provider")
        body = await json_object(request)
        order = self.sim.orders.get((provider.name, str(body.get("reference"))))
        if order is None:
            return error(404, "not_found", "no order for this reference")
        status = body.get("status", order.status)
        webhook_id = body.get("webhook_id")
        if status not in ORDER_STATUSES:
            return error(422, "invalid_request", f"status must be one of {sorted(ORDER_STATUSES)}")
        prefix = WEBHOOK_ID_PREFIX[provider.protocol]
        if webhook_id is not None and not (
            isinstance(webhook_id, str) and webhook_id.startswith(prefix) and len(webhook_id) < 200
        ):
            return error(422, "invalid_request", f"webhook_id must be {prefix}...")
        delivery = await self.sim.deliver(provider, order, str(status), webhook_id)
        return JSONResponse(delivery.to_json())


def _order_fields(body: dict[str, Any]) -> tuple[str, str, str]:
    reference, amount, currency = body.get("reference"), body.get("amount"), body.get("currency")
    if not isinstance(reference, str) or not 0 < len(reference) <= MAX_REFERENCE_LENGTH:
        raise BadBody(f"reference must be a string of 1..{MAX_REFERENCE_LENGTH} characters")
    if not isinstance(currency, str):
        raise InvalidAmount("currency must be three upper-case letters")
    minor = parse_amount(amount, currency)
    if minor == 0:
        raise InvalidAmount("amount must be positive")
    return reference, format_minor(minor, currency), currency


def _provider_changes(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a partial provider update; raises ConfigError."""
    allowed = {"behaviour", "webhook_delay_ms", "hang_ms", "api_key", "webhook_secret", "protocol"}
    unknown = body.keys() - allowed
    if unknown:
        raise ConfigError(f"unknown fields: {sorted(unknown)}")
    if "behaviour" in body and body["behaviour"] not in BEHAVIOURS:
        raise ConfigError(f"behaviour must be one of {sorted(BEHAVIOURS)}")
    for key in ("webhook_delay_ms", "hang_ms"):
        if key in body and not (is_int(body[key]) and 0 <= body[key] <= MAX_DELAY_MS):
            raise ConfigError(f"{key} must be an integer between 0 and {MAX_DELAY_MS}")
    if "api_key" in body and not (isinstance(body["api_key"], str) and body["api_key"]):
        raise ConfigError("api_key must be a non-empty string")
    if "webhook_secret" in body:
        secret = body["webhook_secret"]
        check_secret(secret if isinstance(secret, str) else "", "webhook_secret")
    if "protocol" in body:
        protocol = body["protocol"]
        check_protocol(protocol if isinstance(protocol, str) else "", "protocol")
    return dict(body)
