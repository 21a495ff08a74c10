"""Provider adapters: the protocol, and the reference HTTP adapter (docs/protocols.md).

Each answer is classified at this edge as accepted, declined (final) or
ambiguous, following the provider's `classify` section in the providers file.
Adapters are plug-ins, built by name (the provider's `adapter` setting) from
activities/provider_adapters.py; this one registers there as "http".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from activities import standard_webhooks, strict_json
from activities.http import OutboundHttp, call
from activities.outcomes import AmbiguousOutcome, HttpAnswer, Verdict
from activities.provider_config import ProviderConfig


class OrderStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_FOUND = "not_found"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class OrderRequest:
    reference: str  # our task id: also the idempotency key
    amount: str
    currency: str


@dataclass(frozen=True)
class CreateResult:
    verdict: Verdict
    provider_ref: str | None = None
    paid: bool = False
    reason: str = ""
    retry_after_s: float = 0.0  # THROTTLED: wait this long before asking again


@dataclass(frozen=True)
class StatusResult:
    status: OrderStatus
    provider_ref: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class WebhookNotice:
    webhook_id: str
    reference: str
    status: OrderStatus
    provider_ref: str | None


class WebhookParser(Protocol):
    def parse_webhook(self, webhook_id: str, body: bytes) -> WebhookNotice:
        """Read a webhook body, already authenticated, into a notice; raise
        `WebhookRejected` ("unparseable_body", "missing_data" or "bad_payload") when it
        is not of the provider's documented shape. The only reader of webhook bodies:
        `verify_webhook` uses it on arrival, and the inbox's translator on a stored row.
        `webhook_id`: the id the request's headers carried ("" when the protocol
        carries it in the body, where the parser finds it)."""
        ...


class ProviderAdapter(WebhookParser, Protocol):
    name: str

    async def create_order(self, order: OrderRequest, headers: dict[str, str]) -> CreateResult: ...

    async def get_status(self, reference: str, headers: dict[str, str]) -> StatusResult: ...

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, now: int, tolerance_s: int
    ) -> WebhookNotice:
        """Authenticate the request (raise `WebhookRejected` otherwise), then
        `parse_webhook` its body."""
        ...


_KNOWN = {s.value for s in (OrderStatus.PENDING, OrderStatus.SUCCEEDED, OrderStatus.FAILED)}


def _known_status(value: object) -> bool:
    return isinstance(value, str) and value in _KNOWN  # a list is unhashable: check type first


class HttpProviderAdapter:
    """The reference protocol. One instance per configured provider."""

    def __init__(self, config: ProviderConfig, client: OutboundHttp) -> None:
        self.name = config.name
        self._config = config
        self._client = client
        self._base = config.base_url.rstrip("/")

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._config.api_key.get_secret_value()}", **extra}

    async def create_order(self, order: OrderRequest, headers: dict[str, str]) -> CreateResult:
        body = {"reference": order.reference, "amount": order.amount, "currency": order.currency}
        try:
            answer = await call(
                self._client,
                "POST",
                f"{self._base}/v1/orders",
                json=body,
                headers=self._headers({"Idempotency-Key": order.reference, **headers}),
                timeout_s=self._config.timeout_s,
            )
        except AmbiguousOutcome as exc:
            return CreateResult(Verdict.AMBIGUOUS, reason=exc.reason)
        return self._classify_create(answer)

    def _classify_create(self, answer: HttpAnswer) -> CreateResult:
        rules = self._config.classify
        if answer.status == 429:
            wait_s = answer.retry_after_s if answer.retry_after_s is not None else 1.0
            return CreateResult(Verdict.THROTTLED, reason="throttled", retry_after_s=wait_s)
        if answer.status in rules.accepted_statuses:
            status = answer.body.get("status")
            ref = answer.body.get("id")
            if not _known_status(status) or not isinstance(ref, str):
                return CreateResult(Verdict.AMBIGUOUS, reason="accepted_without_order")
            if status == OrderStatus.FAILED:
                return CreateResult(Verdict.DECLINED, provider_ref=ref, reason="failed_at_create")
            return CreateResult(Verdict.ACCEPTED, ref, paid=status == OrderStatus.SUCCEEDED)
        code = answer.error_code or f"http_{answer.status}"
        if rules.is_final_refusal(answer.status, code):
            return CreateResult(Verdict.DECLINED, reason=code)
        return CreateResult(Verdict.AMBIGUOUS, reason=code)

    async def get_status(self, reference: str, headers: dict[str, str]) -> StatusResult:
        try:
            answer = await call(
                self._client,
                "GET",
                f"{self._base}/v1/orders/{reference}",
                headers=self._headers(headers),
                timeout_s=self._config.timeout_s,
            )
        except AmbiguousOutcome as exc:
            return StatusResult(OrderStatus.UNKNOWN, reason=exc.reason)
        if answer.status == 404:
            return StatusResult(OrderStatus.NOT_FOUND)
        status, ref = answer.body.get("status"), answer.body.get("id")
        if answer.status != 200 or not _known_status(status):
            return StatusResult(OrderStatus.UNKNOWN, reason=f"status_http_{answer.status}")
        if answer.body.get("reference", reference) != reference:
            # An answer about some other order says nothing about ours.
            return StatusResult(OrderStatus.UNKNOWN, reason="answer_for_another_order")
        return StatusResult(OrderStatus(str(status)), ref if isinstance(ref, str) else None)

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, now: int, tolerance_s: int
    ) -> WebhookNotice:
        secrets = [s.get_secret_value() for s in self._config.webhook_secrets]
        verified = standard_webhooks.verify(
            secrets, headers, body, now=now, tolerance_s=tolerance_s
        )
        return self.parse_webhook(verified.webhook_id, body)

    def parse_webhook(self, webhook_id: str, body: bytes) -> WebhookNotice:
        return parse_reference_webhook(webhook_id, body)


class ReferenceWebhooks:
    """The reference protocol's webhook parser alone (no provider settings needed)."""

    def parse_webhook(self, webhook_id: str, body: bytes) -> WebhookNotice:
        return parse_reference_webhook(webhook_id, body)


def parse_reference_webhook(webhook_id: str, body: bytes) -> WebhookNotice:
    """`{"type", "data": {"id", "reference", "status"}}`. Decode strictly
    (activities.strict_json) and check every field's type: a body that passes is
    one PostgreSQL's jsonb stores as it is."""
    try:
        parsed = strict_json.loads(body)
    except strict_json.NotJson:
        raise standard_webhooks.WebhookRejected("unparseable_body") from None
    except strict_json.NotStorable:
        raise standard_webhooks.WebhookRejected("bad_payload") from None
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, dict):
        raise standard_webhooks.WebhookRejected("missing_data")
    reference, status, ref = data.get("reference"), data.get("status"), data.get("id")
    if not isinstance(reference, str) or not _known_status(status):
        raise standard_webhooks.WebhookRejected("bad_payload")
    if ref is not None and not isinstance(ref, str):
        raise standard_webhooks.WebhookRejected("bad_payload")
    return WebhookNotice(webhook_id, reference, OrderStatus(str(status)), ref)
