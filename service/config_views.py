"""The live configuration as people see it: credentials as fingerprints, and each
version as its changes against the one before (who, what, old and new, why).

A fingerprint (`sha256:` and 12 hex digits) tells two secrets apart and lets a
person check which one is in force against their secret store, without the
value ever leaving the database.
"""

from __future__ import annotations

import hashlib
from typing import Any

from service.config_store import Version
from service.provider_documents import CREDENTIALS


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def redacted(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A document with its credentials replaced by fingerprints."""
    if name != "providers":
        return body
    return {provider: _redact_provider(settings) for provider, settings in body.items()}


def _redact_provider(settings: dict[str, Any]) -> dict[str, Any]:
    shown = dict(settings)
    for key in CREDENTIALS:
        value = shown.get(key)
        if isinstance(value, str):
            shown[key] = fingerprint(value)
        elif isinstance(value, list):
            shown[key] = [fingerprint(str(v)) for v in value]
    return shown


def version_view(found: Version) -> dict[str, Any]:
    return {
        "name": found.name,
        "version": found.version,
        "changed_by": found.changed_by,
        "reason": found.reason,
        "changed_at": found.changed_at.isoformat(),
        "body": redacted(found.name, found.body),
    }


def history_view(
    newest_first: list[Version], before_oldest: Version | None
) -> list[dict[str, Any]]:
    """Each version with its changes against the one before it."""
    entries = []
    for index, found in enumerate(newest_first):
        older = newest_first[index + 1] if index + 1 < len(newest_first) else before_oldest
        old = redacted(found.name, older.body) if older else {}
        entries.append(
            {
                "version": found.version,
                "changed_by": found.changed_by,
                "reason": found.reason,
                "changed_at": found.changed_at.isoformat(),
                "changes": changes(old, redacted(found.name, found.body)),
            }
        )
    return entries


def changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Every leaf that differs, by dotted path ({"path", "old", "new"})."""
    found: list[dict[str, Any]] = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            found += changes(before, after, f"{path}.")
        elif before != after:
            found.append({"path": path, "old": before, "new": after})
    return found
