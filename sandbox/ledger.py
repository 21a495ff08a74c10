"""Ledger API (cascade-core balance API) under `/ledger`, backed by PostgreSQL.

See docs/protocols.md. The v1 calls go through `_guard`: bearer auth, then the
injected latency and error rate, then the handler, so an injected 503 never has
a side effect. Admin calls skip the faults so a test can always switch them off.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox import ledger_store as store
from sandbox.config import SandboxConfig
from sandbox.ledger_model import FreezeRequest, LedgerError
from sandbox.web import BadBody, bearer_ok, error, is_int, json_object, unauthorized
from workflows.money import InvalidAmount, is_currency, parse_amount

log = logging.getLogger("sandbox.ledger")

Handler = Callable[[Request], Awaitable[Response]]
MAX_KEY_LENGTH = 200
MAX_LATENCY_MS = 60_000
MAX_PAGE = 1000  # holds in one page of the listing
DEFAULT_PAGE = 500


@dataclass
class Faults:
    error_rate: float = 0.0  # a 503 before anything is applied
    latency_ms: int = 0
    seed: int | None = None
    rng: random.Random = field(default_factory=random.Random)
    error_after_rate: float = 0.0  # applied, then a 500 all the same: the ambiguous case
    # The listing draws its faults from its own generator: a reconciliation reading
    # it in the background must not shift a seeded fault sequence of the money calls.
    listing_rng: random.Random = field(default_factory=random.Random)

    def to_json(self) -> dict[str, object]:
        return {
            "error_rate": self.error_rate,
            "error_after_rate": self.error_after_rate,
            "latency_ms": self.latency_ms,
            "seed": self.seed,
        }


class Ledger:
    def __init__(self, config: SandboxConfig, pool: AsyncConnectionPool) -> None:
        self.token = config.ledger_token
        self.pool = pool
        self.faults = Faults()
        self.initial = [
            (name, currency, parse_amount(amount, currency))
            for name, provider in config.providers.items()
            for currency, amount in provider.balances.items()
        ]

    async def start(self) -> None:
        """Create the schema and the balance rows the config names but the DB lacks."""
        await store.apply_schema(self.pool)
        await store.seed_balances(self.pool, self.initial)

    def routes(self) -> list[BaseRoute]:
        v1, admin = self._guard, self._admin
        return [
            Route("/v1/holds/{key}/freeze", v1(self.freeze), methods=["POST"]),
            Route("/v1/holds/{key}/commit", v1(self.commit), methods=["POST"]),
            Route("/v1/holds/{key}/rollback", v1(self.rollback), methods=["POST"]),
            Route("/v1/holds/{key}", v1(self.get_hold), methods=["GET"]),
            Route("/v1/holds", v1(self.list_holds, listing=True), methods=["GET"]),
            Route("/v1/balances", v1(self.balances), methods=["GET"]),
            Route(
                "/_admin/balances/{provider}/{currency}",
                admin(self.put_balance),
                methods=["PUT"],
            ),
            Route("/_admin/faults", admin(self.put_faults), methods=["PUT"]),
            Route("/_admin/faults", admin(self.get_faults), methods=["GET"]),
            Route("/_admin/ops", admin(self.ops), methods=["GET"]),
            Route("/_admin/reset", admin(self.reset), methods=["POST"]),
        ]

    # -- wrappers ---------------------------------------------------------

    def _admin(self, handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            if not bearer_ok(request, self.token):
                return unauthorized()
            return await _translate_errors(handler, request)

        return wrapped

    def _guard(self, handler: Handler, listing: bool = False) -> Handler:
        async def wrapped(request: Request) -> Response:
            if not bearer_ok(request, self.token):
                return unauthorized()
            if self.faults.latency_ms:
                await asyncio.sleep(self.faults.latency_ms / 1000)
            faults = self.faults
            rng = faults.listing_rng if listing else faults.rng
            if faults.error_rate and rng.random() < faults.error_rate:
                return error(503, "injected_fault", "fault injected by the sandbox")
            response = await _translate_errors(handler, request)
            if (
                faults.error_after_rate
                and response.status_code == 200
                and rng.random() < faults.error_after_rate
            ):
                return error(500, "injected_after_apply", "applied, then failed to answer")
            return response

        return wrapped

    # -- v1 ---------------------------------------------------------------

    async def freeze(self, request: Request) -> Response:
        key = _key(request)
        body = await json_object(request)
        provider, currency = body.get("provider"), body.get("currency")
        if not isinstance(provider, str) or not provider or len(provider) > MAX_KEY_LENGTH:
            raise LedgerError(422, "invalid_request", "provider must be a non-empty string")
        if not is_currency(currency):
            raise LedgerError(422, "invalid_request", "currency must be three upper-case letters")
        assert isinstance(currency, str)
        try:
            minor = parse_amount(body.get("amount"), currency)
        except InvalidAmount as exc:
            raise LedgerError(422, "invalid_request", str(exc)) from None
        if minor == 0:
            raise LedgerError(422, "invalid_request", "amount must be positive")
        order_id = body.get("order_id")  # optional: older clients send none
        if order_id is not None and (
            not isinstance(order_id, str) or not order_id or len(order_id) > MAX_KEY_LENGTH
        ):
            raise LedgerError(422, "invalid_request", "order_id must be a non-empty string")
        freeze = FreezeRequest(provider, currency, minor, order_id)
        hold, replayed = await store.freeze(self.pool, key, freeze)
        # `replayed`: the key was frozen before this call. A caller that lost its own
        # record of the first freeze (a failover) learns that its order may exist.
        return JSONResponse({**hold.to_json(), "replayed": replayed})

    async def commit(self, request: Request) -> Response:
        hold = await store.commit(self.pool, _key(request))
        return JSONResponse(hold.to_json())

    async def rollback(self, request: Request) -> Response:
        hold = await store.rollback(self.pool, _key(request))
        return JSONResponse(hold.to_json())

    async def get_hold(self, request: Request) -> Response:
        hold = await store.get_hold(self.pool, _key(request))
        if hold is None:
            raise LedgerError(404, "hold_not_found", "no hold for this key")
        return JSONResponse(hold.to_json())

    async def list_holds(self, request: Request) -> Response:
        """Every hold; or, with `limit` or `after`, one page of them in byte order of
        key, and `next`: the `after` of the next page (null after the last one)."""
        params = request.query_params
        if "limit" not in params and "after" not in params:  # the listing before paging
            holds = await store.list_holds(self.pool)
            return JSONResponse({"holds": [h.to_json() for h in holds]})
        limit = _page_limit(params.get("limit"))
        after = params.get("after", "")
        if len(after) > MAX_KEY_LENGTH:
            raise LedgerError(422, "invalid_request", "after is longer than any key")
        # One more than asked: whether it comes says whether there is a next page.
        page = await store.list_holds_page(self.pool, after, limit + 1)
        cursor = page[limit - 1].key if len(page) > limit else None
        return JSONResponse({"holds": [h.to_json() for h in page[:limit]], "next": cursor})

    async def balances(self, request: Request) -> Response:
        return JSONResponse({"balances": await store.list_balances(self.pool)})

    # -- admin ------------------------------------------------------------

    async def put_balance(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        currency = request.path_params["currency"]
        body = await json_object(request)
        try:
            minor = parse_amount(body.get("available"), currency)
        except InvalidAmount as exc:
            raise LedgerError(422, "invalid_request", str(exc)) from None
        return JSONResponse(await store.set_available(self.pool, provider, currency, minor))

    async def put_faults(self, request: Request) -> Response:
        body = await json_object(request)
        rate, latency, seed = (
            body.get("error_rate", 0),
            body.get("latency_ms", 0),
            body.get("seed"),
        )
        after = body.get("error_after_rate", 0)
        for name, value in (("error_rate", rate), ("error_after_rate", after)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise LedgerError(422, "invalid_request", f"{name} must be a number in [0, 1]")
        if not is_int(latency) or not 0 <= latency <= MAX_LATENCY_MS:
            raise LedgerError(422, "invalid_request", "latency_ms must be an integer >= 0")
        if seed is not None and not is_int(seed):
            raise LedgerError(422, "invalid_request", "seed must be an integer")
        # A fresh seeded generator makes a fault sequence reproducible per PUT.
        self.faults = Faults(
            float(rate), latency, seed, random.Random(seed), float(after), random.Random(seed)
        )
        return JSONResponse(self.faults.to_json())

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self.faults.to_json())

    async def ops(self, request: Request) -> Response:
        return JSONResponse({"ops": await store.list_ops(self.pool)})

    async def reset(self, request: Request) -> Response:
        self.faults = Faults()
        await store.reset(self.pool, self.initial)
        return JSONResponse({"reset": True})


def _page_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise LedgerError(422, "invalid_request", f"limit must be an integer in 1..{MAX_PAGE}")
    return int(text)


def _key(request: Request) -> str:
    key: str = request.path_params["key"]
    if not key or len(key) > MAX_KEY_LENGTH:
        raise LedgerError(422, "invalid_request", f"key must be 1..{MAX_KEY_LENGTH} characters")
    return key


async def _translate_errors(handler: Handler, request: Request) -> Response:
    """Map domain errors to protocol bodies; database trouble is an ambiguous 503."""
    try:
        return await handler(request)
    except LedgerError as exc:
        return error(exc.status, exc.code, exc.message)
    except BadBody as exc:
        return error(422, "invalid_request", str(exc))
    except (psycopg.Error, PoolTimeout) as exc:
        # Not retried here: the protocol makes any 5xx ambiguous, so the
        # client retries with the same key.
        log.warning("ledger database error: %s", type(exc).__name__)
        return error(503, "unavailable", "ledger database unavailable")
