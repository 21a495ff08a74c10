"""The providers document: provider settings as the live configuration stores them.

Stored as JSON with credentials in clear (the database is where a deployment's
secrets already live, beside the ledger tokens of its environment), and shown
everywhere else as fingerprints (service/config_views.py). Parsing validates the
whole document, so one bad provider refuses the whole change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from activities.provider_adapters import check_adapters
from activities.provider_config import ProviderConfig

CREDENTIALS = ("api_key", "webhook_secrets")


@dataclass(frozen=True)
class ProviderSet:
    """One version of the providers document."""

    version: int
    providers: Mapping[str, ProviderConfig]

    def get(self, name: str) -> ProviderConfig | None:
        return self.providers.get(name)

    def with_credentials_of(self, newest: ProviderSet) -> ProviderSet:
        """These settings, with `newest`'s credentials where it still has the provider."""
        merged = {
            name: _credentials_from(config, newest.get(name))
            for name, config in self.providers.items()
        }
        return ProviderSet(self.version, merged)


def _credentials_from(config: ProviderConfig, newest: ProviderConfig | None) -> ProviderConfig:
    if newest is None:
        return config
    return config.model_copy(
        update={"api_key": newest.api_key, "webhook_secrets": newest.webhook_secrets}
    )


def provider_body(config: ProviderConfig) -> dict[str, Any]:
    """One provider as stored: its settings, credentials in clear, without its name."""
    body = config.model_dump(mode="json", exclude={"name"})
    body["api_key"] = config.api_key.get_secret_value()
    body["webhook_secrets"] = [s.get_secret_value() for s in config.webhook_secrets]
    return body


def providers_body(providers: ProviderSet | Mapping[str, ProviderConfig]) -> dict[str, Any]:
    found = providers.providers if isinstance(providers, ProviderSet) else providers
    return {name: provider_body(config) for name, config in sorted(found.items())}


def parse_providers(body: Mapping[str, Any]) -> dict[str, ProviderConfig]:
    """Every provider of the document, validated; ValueError naming what is wrong."""
    if not body:
        raise ValueError("at least one provider must remain")
    parsed = {name: ProviderConfig(name=name, **settings) for name, settings in body.items()}
    check_adapters(parsed)
    return parsed


def parse_provider(
    name: str, settings: Mapping[str, Any], kept: ProviderConfig | None
) -> ProviderConfig:
    """One provider from an ops change. Credentials left out are kept from `kept`
    (the provider in force), so a change of timing need not carry the secrets."""
    merged = dict(settings)
    if kept is not None:
        merged.setdefault("api_key", kept.api_key.get_secret_value())
        merged.setdefault("webhook_secrets", [s.get_secret_value() for s in kept.webhook_secrets])
    return ProviderConfig(name=name, **merged)
