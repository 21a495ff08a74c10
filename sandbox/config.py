"""Sandbox configuration: a TOML file loaded into frozen dataclasses.

```toml
webhook_url = "http://127.0.0.1:8000"   # webhooks go to {webhook_url}/webhooks/{name}
ledger_token = "ledger-dev-token"
[providers.alpha]
api_key = "sk_test_alpha"
webhook_secret = "whsec_..."
behaviour = "instant"
webhook_delay_ms = 200
hang_ms = 30000
balances = { EUR = "100000.00" }
protocol = "http"      # the wire shape: "http" (the reference) or "acme"
```
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from activities.standard_webhooks import secret_key
from sandbox.market import MarketError, MarketModel, parse_market
from workflows.money import InvalidAmount, parse_amount

BEHAVIOURS = frozenset(
    {
        "instant",
        "delayed_webhook",
        "decline",
        "accept_then_fail",
        "error_5xx",
        "error_5xx_after_create",
        "timeout",
        "never_answers",
        "polling_only",
        "blackout",
        "market",
        "throttle_once",  # the first create per order: 429 with Retry-After: 1
    }
)
# The wire shapes a simulated provider speaks, named like payment-service's adapters
# (docs/protocols.md): the reference protocol, and Acme's.
PROTOCOLS = frozenset({"http", "acme"})
DEFAULT_PROTOCOL = "http"
# Provider names appear in URL paths; "_admin" and friends must stay reserved.
PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}", re.ASCII)
DEFAULT_WEBHOOK_DELAY_MS = 200
DEFAULT_HANG_MS = 30_000
MAX_DELAY_MS = 3_600_000


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending field."""


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    api_key: str
    webhook_secret: str
    behaviour: str = "instant"
    webhook_delay_ms: int = DEFAULT_WEBHOOK_DELAY_MS
    hang_ms: int = DEFAULT_HANG_MS
    # currency -> strict decimal string, e.g. {"EUR": "100000.00"}
    balances: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    market: MarketModel | None = None  # for behaviour = "market"
    protocol: str = DEFAULT_PROTOCOL  # one of PROTOCOLS

    def __repr__(self) -> str:
        # Keep api_key and webhook_secret out of logs and tracebacks.
        return (
            f"ProviderConfig(name={self.name!r}, behaviour={self.behaviour!r},"
            f" protocol={self.protocol!r})"
        )


@dataclass(frozen=True)
class SandboxConfig:
    webhook_url: str
    ledger_token: str
    market_seed: int = 1
    providers: Mapping[str, ProviderConfig] = field(default_factory=lambda: MappingProxyType({}))

    def __repr__(self) -> str:
        return f"SandboxConfig(webhook_url={self.webhook_url!r}, providers={list(self.providers)})"


def load_config(path: str | Path) -> SandboxConfig:
    with Path(path).open("rb") as fh:
        try:
            data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> SandboxConfig:
    webhook_url = _string(data, "webhook_url", "")
    if not webhook_url.startswith(("http://", "https://")):
        raise ConfigError("webhook_url must be an http(s) URL")
    token = _string(data, "ledger_token", "")
    if not token:
        raise ConfigError("ledger_token must be a non-empty string")
    raw_providers = data.get("providers", {})
    if not isinstance(raw_providers, dict):
        raise ConfigError("[providers] must be a table")
    providers = {name: parse_provider(name, raw) for name, raw in raw_providers.items()}
    seed = data.get("market_seed", 1)
    if not isinstance(seed, int):
        raise ConfigError("market_seed must be an integer")
    return SandboxConfig(
        webhook_url=webhook_url.rstrip("/"),
        ledger_token=token,
        market_seed=seed,
        providers=MappingProxyType(providers),
    )


def parse_provider(name: str, raw: object) -> ProviderConfig:
    where = f"providers.{name}"
    if PROVIDER_NAME.fullmatch(name) is None:
        raise ConfigError(f"{where}: name must match {PROVIDER_NAME.pattern}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    api_key = _string(raw, "api_key", "")
    if not api_key:
        raise ConfigError(f"{where}.api_key must be a non-empty string")
    secret = _string(raw, "webhook_secret", "")
    check_secret(secret, where)
    behaviour = _string(raw, "behaviour", "instant")
    if behaviour not in BEHAVIOURS:
        raise ConfigError(f"{where}.behaviour must be one of {sorted(BEHAVIOURS)}")
    try:
        market = parse_market(raw["market"], where) if "market" in raw else None
    except MarketError as exc:
        raise ConfigError(str(exc)) from None
    if behaviour == "market" and market is None:
        raise ConfigError(f"{where}: behaviour market needs a [{where}.market] table")
    protocol = _string(raw, "protocol", DEFAULT_PROTOCOL)
    check_protocol(protocol, where)
    return ProviderConfig(
        name=name,
        api_key=api_key,
        webhook_secret=secret,
        behaviour=behaviour,
        webhook_delay_ms=_millis(raw, "webhook_delay_ms", DEFAULT_WEBHOOK_DELAY_MS, where),
        hang_ms=_millis(raw, "hang_ms", DEFAULT_HANG_MS, where),
        balances=MappingProxyType(_balances(raw.get("balances", {}), where)),
        market=market,
        protocol=protocol,
    )


def check_protocol(protocol: str, where: str) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}.protocol must be one of {sorted(PROTOCOLS)}")


def check_secret(secret: str, where: str) -> None:
    if not secret.startswith("whsec_"):
        raise ConfigError(f"{where}.webhook_secret must be whsec_<base64>")
    try:
        key = secret_key(secret)
    except ValueError:
        raise ConfigError(f"{where}.webhook_secret must be whsec_<base64>") from None
    if not key:
        raise ConfigError(f"{where}.webhook_secret is empty")


def _balances(raw: object, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}.balances must be a table of currency = "amount"')
    out: dict[str, str] = {}
    for currency, amount in raw.items():
        try:
            parse_amount(amount, currency)
        except InvalidAmount as exc:
            raise ConfigError(f"{where}.balances.{currency}: {exc}") from None
        out[currency] = amount
    return out


def _string(raw: Mapping[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string")
    return value


def _millis(raw: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DELAY_MS:
        raise ConfigError(f"{where}.{key} must be an integer between 0 and {MAX_DELAY_MS}")
    return value
