"""The "acme" provider adapter: a second, differently shaped provider protocol
(docs/protocols.md, "Provider adapters").

Where the reference protocol (activities/providers.py) speaks Bearer auth,
decimal amounts, lower-case statuses and Standard Webhooks, Acme speaks:

- auth by an `X-Acme-Key` header; amounts in minor units;
- orders as `{"order": {"id", "merchant_reference", "state"}}` with `state` in
  PROCESSING, PAID, REJECTED; errors as `{"error_code", "message"}`;
- webhooks `{"event_id", "order": {...}}` signed with `X-Acme-Timestamp` and
  `X-Acme-Signature` (hex HMAC-SHA256 of `"{timestamp}.{body}"`).

The signing key is derived as for Standard Webhooks: the configured secret is
`whsec_` + base64 of the key bytes (Acme's signing secret, as bytes), so the
providers file keeps one format and rotation works the same way: every secret
listed in `webhook_secrets` is tried.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from activities import strict_json
from activities.http import OutboundHttp, call
from activities.outcomes import AmbiguousOutcome, HttpAnswer, Verdict
from activities.provider_config import ProviderConfig
from activities.providers import (
    CreateResult,
    OrderRequest,
    OrderStatus,
    StatusResult,
    WebhookNotice,
)
from activities.standard_webhooks import WebhookRejected, secret_key
from workflows.money import parse_amount

KEY_HEADER = "X-Acme-Key"
# Lower case, as HTTP/2 sends them and starlette's headers look them up.
TIMESTAMP_HEADER = "x-acme-timestamp"
SIGNATURE_HEADER = "x-acme-signature"
MAX_EVENT_ID = 200

# Acme's states, each mapped explicitly. Anything else (a state Acme added later, a
# wrong type, a different case) is UNKNOWN: never a success, never a failure.
STATES: Mapping[str, OrderStatus] = MappingProxyType(
    {
        "PROCESSING": OrderStatus.PENDING,
        "PAID": OrderStatus.SUCCEEDED,
        "REJECTED": OrderStatus.FAILED,
    }
)


def order_status(state: object) -> OrderStatus:
    return STATES.get(state, OrderStatus.UNKNOWN) if isinstance(state, str) else OrderStatus.UNKNOWN


# -- signatures -------------------------------------------------------------------


def _digest(key: bytes, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).digest()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Acme-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    return _digest(secret_key(secret), timestamp, body).hex()


def signed_headers(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def verify_signature(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: int,
    tolerance_s: int,
) -> int:
    """The timestamp of a webhook whose signature matches any secret (rotation);
    `WebhookRejected` otherwise, with the reasons Standard Webhooks uses."""
    raw_ts = headers.get(TIMESTAMP_HEADER, "")
    raw_sig = headers.get(SIGNATURE_HEADER, "")
    if not raw_ts or not raw_sig:
        raise WebhookRejected("missing_headers")
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 12:
        raise WebhookRejected("malformed_timestamp")
    timestamp = int(raw_ts)
    if abs(now - timestamp) > tolerance_s:
        raise WebhookRejected("timestamp_out_of_tolerance")
    offered = raw_sig.strip()
    if len(offered) != 2 * hashlib.sha256().digest_size or not offered.isascii():
        raise WebhookRejected("malformed_signature")
    try:
        candidate = bytes.fromhex(offered)
    except ValueError:
        raise WebhookRejected("malformed_signature") from None
    # Every secret is compared, with compare_digest and no early exit: timing says
    # nothing about which one came close.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(candidate, _digest(secret_key(secret), timestamp, body))
    if not matched:
        raise WebhookRejected("bad_signature")
    return timestamp


# -- the adapter -------------------------------------------------------------------


class AcmeProviderAdapter:
    """Acme's protocol. One instance per configured provider with `adapter = "acme"`.

    Classification at the edge: a `classify` accepted status with an order is
    accepted (PAID: already paid out), or declined when the order is REJECTED;
    a 429 is throttled; a `classify` declined status is declined (if
    `declined_codes` is set, only for those `error_code`s, compared as Acme sends
    them); anything else, an accepted answer without a readable order or in an
    unknown state included, is ambiguous.
    """

    def __init__(self, config: ProviderConfig, client: OutboundHttp) -> None:
        self.name = config.name
        self._config = config
        self._client = client
        self._base = config.base_url.rstrip("/")

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        return {KEY_HEADER: self._config.api_key.get_secret_value(), **extra}

    async def create_order(self, order: OrderRequest, headers: dict[str, str]) -> CreateResult:
        body = {
            "merchant_reference": order.reference,  # Acme's idempotency key
            "amount_minor": parse_amount(order.amount, order.currency),
            "currency": order.currency,
        }
        try:
            answer = await call(
                self._client,
                "POST",
                f"{self._base}/v2/payouts",
                json=body,
                headers=self._headers(headers),
                timeout_s=self._config.timeout_s,
            )
        except AmbiguousOutcome as exc:
            return CreateResult(Verdict.AMBIGUOUS, reason=exc.reason)
        return self._classify_create(order.reference, answer)

    def _classify_create(self, reference: str, answer: HttpAnswer) -> CreateResult:
        rules = self._config.classify
        if answer.status == 429:
            wait_s = answer.retry_after_s if answer.retry_after_s is not None else 1.0
            return CreateResult(Verdict.THROTTLED, reason="throttled", retry_after_s=wait_s)
        if answer.status in rules.accepted_statuses:
            found = _order(answer.body)
            if found is None:
                return CreateResult(Verdict.AMBIGUOUS, reason="accepted_without_order")
            ref, answered_for, status = found
            if ref is None:
                return CreateResult(Verdict.AMBIGUOUS, reason="accepted_without_order")
            if answered_for != reference:
                return CreateResult(Verdict.AMBIGUOUS, reason="answer_for_another_order")
            if status == OrderStatus.FAILED:
                return CreateResult(Verdict.DECLINED, provider_ref=ref, reason="rejected")
            if status not in (OrderStatus.PENDING, OrderStatus.SUCCEEDED):
                # The order exists in a state we cannot read: status checks find out.
                return CreateResult(Verdict.AMBIGUOUS, reason="unknown_state")
            return CreateResult(Verdict.ACCEPTED, ref, paid=status == OrderStatus.SUCCEEDED)
        code = _error_code(answer.body) or f"http_{answer.status}"
        if rules.is_final_refusal(answer.status, code):
            return CreateResult(Verdict.DECLINED, reason=code)
        return CreateResult(Verdict.AMBIGUOUS, reason=code)

    async def get_status(self, reference: str, headers: dict[str, str]) -> StatusResult:
        try:
            answer = await call(
                self._client,
                "GET",
                f"{self._base}/v2/payouts/{reference}",
                headers=self._headers(headers),
                timeout_s=self._config.timeout_s,
            )
        except AmbiguousOutcome as exc:
            return StatusResult(OrderStatus.UNKNOWN, reason=exc.reason)
        if answer.status == 404 and _error_code(answer.body) == "NOT_FOUND":
            # Only Acme's own "no such payout": a 404 from elsewhere (a wrong base URL,
            # a proxy) says nothing about the order.
            return StatusResult(OrderStatus.NOT_FOUND)
        found = _order(answer.body) if answer.status == 200 else None
        if found is None:
            return StatusResult(OrderStatus.UNKNOWN, reason=f"status_http_{answer.status}")
        ref, answered_for, status = found
        if answered_for != reference:
            return StatusResult(OrderStatus.UNKNOWN, reason="answer_for_another_order")
        if status == OrderStatus.UNKNOWN:
            return StatusResult(OrderStatus.UNKNOWN, ref, reason="unknown_state")
        return StatusResult(status, ref)

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, now: int, tolerance_s: int
    ) -> WebhookNotice:
        secrets = [s.get_secret_value() for s in self._config.webhook_secrets]
        verify_signature(secrets, headers, body, now=now, tolerance_s=tolerance_s)
        return self.parse_webhook("", body)

    def parse_webhook(self, webhook_id: str, body: bytes) -> WebhookNotice:
        return parse_acme_webhook(body)


def parse_acme_webhook(body: bytes) -> WebhookNotice:
    """`{"event_id", "order": {"id", "merchant_reference", "state"}}`; the event id
    (signed, in the body) is the webhook id the inbox deduplicates on. A state
    outside STATES is refused like any other bad payload: an unsolicited
    observation we cannot read must not move a task."""
    try:
        parsed = strict_json.loads(body)
    except strict_json.NotJson:
        raise WebhookRejected("unparseable_body") from None
    except strict_json.NotStorable:
        raise WebhookRejected("bad_payload") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("order"), dict):
        raise WebhookRejected("missing_data")
    event_id = parsed.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID:
        raise WebhookRejected("bad_payload")
    found = _order(parsed)
    if found is None:
        raise WebhookRejected("bad_payload")
    ref, reference, status = found
    if status == OrderStatus.UNKNOWN:
        raise WebhookRejected("bad_payload")
    return WebhookNotice(event_id, reference, status, ref)


def _order(body: Mapping[str, object]) -> tuple[str | None, str, OrderStatus] | None:
    """(Acme's order id, merchant_reference, state) of `{"order": {...}}`, or None
    when there is no order object or a field has the wrong type."""
    order = body.get("order")
    if not isinstance(order, dict):
        return None
    ref, reference = order.get("id"), order.get("merchant_reference")
    if not (ref is None or isinstance(ref, str)) or not isinstance(reference, str):
        return None
    return ref, reference, order_status(order.get("state"))


def _error_code(body: Mapping[str, object]) -> str | None:
    code = body.get("error_code")
    return code if isinstance(code, str) else None
