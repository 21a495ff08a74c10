"""Standard Webhooks signing and verification (https://www.standardwebhooks.com).

Written here instead of using the `standardwebhooks` package because that one
raises ValueError/UnicodeDecodeError on malformed input (a 5xx in a handler
that only catches its own error) and fixes the tolerance at five minutes.
Every failure here is a `WebhookRejected` with a short machine reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
MAX_SIGNATURES = 8


class WebhookRejected(Exception):
    """The request is not a valid signed webhook. `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedWebhook:
    webhook_id: str
    timestamp: int


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_key(secret: str) -> bytes:
    """Decode a `whsec_` secret into its HMAC key."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not whsec_<base64>") from exc


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


def verify(
    secrets_: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: int,
    tolerance_s: int,
) -> VerifiedWebhook:
    """Accept if any `v1` signature matches any secret (key rotation)."""
    webhook_id = headers.get("webhook-id", "")
    raw_ts = headers.get("webhook-timestamp", "")
    raw_sigs = headers.get("webhook-signature", "")
    if not webhook_id or not raw_ts or not raw_sigs:
        raise WebhookRejected("missing_headers")
    if len(webhook_id) > 200:
        raise WebhookRejected("malformed_id")
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 12:
        raise WebhookRejected("malformed_timestamp")
    timestamp = int(raw_ts)
    if abs(now - timestamp) > tolerance_s:
        raise WebhookRejected("timestamp_out_of_tolerance")
    offered = _parse_signatures(raw_sigs)
    keys = [secret_key(s) for s in secrets_]
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in keys]
    # Compare every pair with compare_digest and no early exit, so timing says
    # nothing about which entry came close.
    matched = False
    for candidate in offered:
        for digest in expected:
            matched |= hmac.compare_digest(candidate, digest)
    if not matched:
        raise WebhookRejected("bad_signature")
    return VerifiedWebhook(webhook_id=webhook_id, timestamp=timestamp)


def _parse_signatures(header: str) -> list[bytes]:
    entries = header.split()
    if len(entries) > MAX_SIGNATURES:
        raise WebhookRejected("malformed_signature")
    parsed: list[bytes] = []
    for entry in entries:
        version, sep, b64 = entry.partition(",")
        if not sep:
            raise WebhookRejected("malformed_signature")
        if version != "v1":
            continue
        try:
            parsed.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError):
            raise WebhookRejected("malformed_signature") from None
    if not parsed:
        raise WebhookRejected("malformed_signature")
    return parsed
