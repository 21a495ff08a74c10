"""Live configuration: the rollout gate and the provider settings, read from
PostgreSQL and applied by every process within seconds, without a restart.

Why in the database: an incident must be able to move a merchant back to the old
path, slow a provider down or rotate its webhook secret in seconds, on every API
process and worker at once. A file read at start-up needs a rolling restart.

How a change travels: the ops API, `service.ops config` or the console append a
version (service/config_store.py); the table's trigger NOTIFYs `live_config` at
commit. Each process LISTENs on its own connection and re-reads at once; it also
re-reads every `refresh_s` (2 s), so a notification lost with its connection
(a failover, a restart) delays a change by seconds, not forever.

What a withdrawal keeps: its decision (service/rollout.py) and the version of the
providers document it started with, as it keeps its workflow version. Its
timing, classification, endpoint and adapter come from that version
(`provider_at`). Its credentials do not: a rotated API key or webhook secret must
reach the withdrawals in flight too, so every version is read with the newest
credentials of the same provider.

Failures: a re-read that fails (the database is away) keeps the configuration in
hand and logs; the next one catches up. Nothing here ever blocks a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping

import psycopg
from prometheus_client import Gauge

from activities.provider_config import ProviderConfig
from engine.db import Pool
from engine.journal import Conn
from service import config_store
from service.config_store import Document, VersionConflict
from service.provider_documents import ProviderSet, parse_providers, providers_body
from service.rollout import RolloutConfig, RolloutGate

log = logging.getLogger("payment.live_config")
CHANNEL = "live_config"
LISTENER_NAME = "payment-live-config"
# Per process: that every process applied a change shows on each one's /metrics.
IN_FORCE = Gauge(
    "live_config_version", "The live configuration version this process applies", ["document"]
)


class LiveConfig:
    """The documents in force in this process, and every providers version any
    withdrawal may still run on."""

    def __init__(self, pool: Pool, database_url: str, scope: str, refresh_s: float = 2.0) -> None:
        self.pool, self.scope, self.refresh_s = pool, scope, refresh_s
        self._url = database_url
        self.gate = RolloutGate()
        self._sets: dict[int, ProviderSet] = {}
        self._latest = 0
        self._follower: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[Document, int], None]] = []

    @property
    def rollout(self) -> RolloutConfig:
        return self.gate.config

    @property
    def providers(self) -> ProviderSet:
        return self._sets[self._latest]

    def providers_at(self, version: int | None) -> ProviderSet:
        """The providers a withdrawal started with (None, or a version this process
        does not know: the current ones), with the newest credentials."""
        kept = self._sets.get(version) if version is not None else None
        if kept is None or version == self._latest:
            return self.providers
        return kept.with_credentials_of(self.providers)

    def provider_at(self, version: int | None, name: str) -> ProviderConfig | None:
        return self.providers_at(version).get(name)

    async def open(
        self, rollout_seed: RolloutConfig, providers_seed: ProviderSet, source: str
    ) -> None:
        """Seed an empty scope from the files, then load what is in force."""
        async with self.pool.connection() as conn:
            await config_store.seed(
                conn, self.scope, "rollout", rollout_seed.model_dump(mode="json"), source
            )
            await config_store.seed(
                conn, self.scope, "providers", providers_body(providers_seed), source
            )
            await self.refresh(conn)

    async def refresh(self, conn: Conn) -> bool:
        """Apply every version newer than this process has; True if any."""
        latest = await config_store.latest_versions(conn, self.scope)
        moved = False
        if latest.get("rollout", 0) > (self.gate.version or 0):
            await self._load_rollout(conn)
            moved = True
        if latest.get("providers", 0) > self._latest:
            await self._load_providers(conn)
            moved = True
        return moved

    async def _load_rollout(self, conn: Conn) -> None:
        newest = (await config_store.history(conn, self.scope, "rollout", 1))[0]
        self.gate = RolloutGate(RolloutConfig.model_validate(newest.body), newest.version)
        log.info(
            "rollout version %d in force (%s: %s)", newest.version, newest.changed_by, newest.reason
        )
        self._announce("rollout", newest.version)

    async def _load_providers(self, conn: Conn) -> None:
        for found in await config_store.versions_since(conn, self.scope, "providers", self._latest):
            self._sets[found.version] = ProviderSet(found.version, parse_providers(found.body))
            self._latest = found.version
        log.info("providers version %d in force", self._latest)
        self._announce("providers", self._latest)

    def _announce(self, name: Document, version: int) -> None:
        IN_FORCE.labels(name).set(version)
        for listener in self.on_change:
            listener(name, version)

    async def change_rollout(
        self,
        conn: Conn,
        change: Callable[[RolloutConfig], RolloutConfig],
        *,
        actor: str,
        reason: str,
        expected: int | None = None,
    ) -> int:
        """Append `change(current)` as the next rollout version; applied here at once,
        elsewhere within seconds. ValueError (pydantic's) when it is invalid,
        VersionConflict when `expected` is not the version in force."""
        await self.refresh(conn)
        current = self.gate.version or 0
        _expect(expected, current)
        proposed = RolloutConfig.model_validate(change(self.rollout).model_dump())
        version = await config_store.append(
            conn, self.scope, "rollout", current, proposed.model_dump(mode="json"), actor, reason
        )
        await self.refresh(conn)
        return version

    async def change_providers(
        self,
        conn: Conn,
        change: Callable[[dict[str, ProviderConfig]], dict[str, ProviderConfig]],
        *,
        actor: str,
        reason: str,
        expected: int | None = None,
    ) -> int:
        """As change_rollout, for the providers document (validated whole: every
        provider, its adapter known)."""
        await self.refresh(conn)
        _expect(expected, self._latest)
        proposed = providers_body(ProviderSet(0, change(dict(self.providers.providers))))
        parse_providers(proposed)  # refuses the whole change, naming the field
        version = await config_store.append(
            conn, self.scope, "providers", self._latest, proposed, actor, reason
        )
        await self.refresh(conn)
        return version

    def start(self) -> None:
        """Follow changes in the background until `close`."""
        self._follower = asyncio.create_task(self._follow(), name="live-config")

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower

    async def _follow(self) -> None:
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "live configuration: %s; re-reading in %.0f s",
                    type(exc).__name__,
                    self.refresh_s,
                )
                await asyncio.sleep(self.refresh_s)  # a backoff, not a synchronisation

    async def _listen(self) -> None:
        # Named, so that pg_stat_activity tells it from the pool's connections.
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name=LISTENER_NAME
        )
        async with conn:
            conn.row_factory = psycopg.rows.dict_row  # type: ignore[assignment]
            await conn.execute(f"LISTEN {CHANNEL}")
            while True:
                await self.refresh(conn)  # type: ignore[arg-type]
                # Wake on the first notification, or after refresh_s: the safety net.
                async for _ in conn.notifies(timeout=self.refresh_s, stop_after=1):
                    pass


def _expect(expected: int | None, current: int) -> None:
    if expected is not None and expected != current:
        raise VersionConflict(f"version {current} is in force, not {expected}")


class CurrentProviders(Mapping[str, ProviderConfig]):
    """The providers in force, as a mapping that follows changes: for the parts
    that must always see the newest (routing limits, health rules, webhook
    secrets, the list a submission is checked against)."""

    def __init__(self, live: LiveConfig) -> None:
        self._live = live

    def __getitem__(self, name: str) -> ProviderConfig:
        return self._live.providers.providers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live.providers.providers)

    def __len__(self) -> int:
        return len(self._live.providers.providers)
