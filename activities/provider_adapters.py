"""Provider adapters as plug-ins: a registry by name, and the inbox's webhook translator.

Each provider in the providers file names its adapter (`adapter = "http"` by
default); `build_adapters` makes one instance per provider through the factory
registered under that name, and refuses a name nobody registered, saying which
provider named it and which names exist. Adding a protocol: write a class that
satisfies `activities.providers.ProviderAdapter` and `register` it below
(docs/protocols.md, "Provider adapters").

The adapter's `WebhookNotice` is the only reading of a webhook body: the API
gets it from `verify_webhook`, and `WebhookTranslator` gets it from the same
adapter's `parse_webhook` when a stored inbox row is applied.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping

from activities.acme import AcmeProviderAdapter
from activities.http import OutboundHttp
from activities.provider_config import ProviderConfig
from activities.providers import (
    HttpProviderAdapter,
    ProviderAdapter,
    StatusResult,
    WebhookParser,
)
from activities.standard_webhooks import WebhookRejected
from activities.withdrawal import status_event
from engine.rows import DbRow
from workflows.core import Event

AdapterFactory = Callable[[ProviderConfig, OutboundHttp], ProviderAdapter]

_FACTORIES: dict[str, AdapterFactory] = {}


class UnknownAdapter(ValueError):
    """A provider names an adapter that is not registered. The message says which."""


def register(name: str, factory: AdapterFactory) -> None:
    """Make `factory(config, outbound)` the adapter of every provider whose
    `adapter` setting is `name`."""
    current = _FACTORIES.get(name)
    if current is not None and current is not factory:
        raise ValueError(f"an adapter named {name!r} is registered already")
    _FACTORIES[name] = factory


def known_adapters() -> list[str]:
    return sorted(_FACTORIES)


def check_adapters(providers: Mapping[str, ProviderConfig]) -> None:
    """Raise UnknownAdapter for the first provider whose adapter is not registered."""
    for name, config in providers.items():
        if config.adapter not in _FACTORIES:
            raise UnknownAdapter(
                f"provider {name!r}: unknown adapter {config.adapter!r}"
                f" (known adapters: {', '.join(known_adapters())})"
            )


def build_adapters(
    providers: Mapping[str, ProviderConfig], outbound: OutboundHttp
) -> dict[str, ProviderAdapter]:
    """One adapter per provider, each from the factory its `adapter` names."""
    check_adapters(providers)
    return {
        name: _FACTORIES[config.adapter](config, outbound) for name, config in providers.items()
    }


class VersionedAdapters:
    """An adapter per provider and per version of the provider settings, built on
    first use: a withdrawal speaks to its provider as the settings it started with
    say (service/live_config.py). `settings_at(version)` gives a cache key (the
    version and the credentials it is read with) and the providers of that
    version; None asks for the ones in force."""

    def __init__(
        self,
        settings_at: Callable[[int | None], tuple[Hashable, Mapping[str, ProviderConfig]]],
        outbound: OutboundHttp,
    ) -> None:
        self._settings_at = settings_at
        self._outbound = outbound
        self._built: dict[tuple[Hashable, str], ProviderAdapter] = {}

    def adapter(self, provider: str, version: int | None = None) -> ProviderAdapter | None:
        key, providers = self._settings_at(version)
        config = providers.get(provider)
        if config is None:
            return None
        built = self._built.get((key, provider))
        if built is None:
            built = self._built[(key, provider)] = _FACTORIES[config.adapter](
                config, self._outbound
            )
        return built

    def current(self) -> Mapping[str, ProviderAdapter]:
        """The adapters in force, as a mapping that follows changes (the webhook inbox
        reads and verifies with the newest secrets)."""
        return _CurrentAdapters(self)

    def names(self) -> list[str]:
        return list(self._settings_at(None)[1])


class _CurrentAdapters(Mapping[str, ProviderAdapter]):
    def __init__(self, source: VersionedAdapters) -> None:
        self._source = source

    def __getitem__(self, name: str) -> ProviderAdapter:
        found = self._source.adapter(name)
        if found is None:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._source.names())

    def __len__(self) -> int:
        return len(self._source.names())


register("http", HttpProviderAdapter)
register("acme", AcmeProviderAdapter)


class UnreadableWebhook(ValueError):
    """A stored webhook its provider's adapter cannot read (or whose provider has no
    adapter any more). A ValueError, so the inbox records it like an unknown task:
    nothing is applied."""


class WebhookTranslator:
    """Inbox row -> (task id, event), through the row's provider's adapter: the body
    is read by `parse_webhook`, never here. The provider's reference is our task
    id; the provider whose secret verified the webhook is the event's speaker.

    `fallback` reads the rows of providers without an adapter of their own (tests
    with no providers file); by default such a row is unreadable."""

    def __init__(
        self, parsers: Mapping[str, WebhookParser], *, fallback: WebhookParser | None = None
    ) -> None:
        self._parsers = parsers
        self._fallback = fallback

    def __call__(self, row: DbRow) -> tuple[str, Event]:
        """A stored inbox row (the database edge) -> (task id, event)."""
        provider = str(row["provider"])
        parser = self._parsers.get(provider, self._fallback)
        if parser is None:
            raise UnreadableWebhook(f"no adapter for provider {provider!r}")
        try:
            notice = parser.parse_webhook(str(row.get("webhook_id") or ""), _raw(row["body"]))
        except WebhookRejected as exc:
            raise UnreadableWebhook(exc.reason) from None
        task_id = str(uuid.UUID(notice.reference))  # not one of ours: a ValueError
        result = StatusResult(notice.status, notice.provider_ref)
        return task_id, status_event(result, provider)


def _raw(body: object) -> bytes:
    """The stored body as bytes again: the inbox keeps it as jsonb (decoded by
    psycopg) or, on the API's path, as the dict it is about to store. Its JSON
    text is not byte for byte what was signed, which only verification needs."""
    return body if isinstance(body, bytes) else json.dumps(body).encode()
