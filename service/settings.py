"""The service's settings, from the environment (pydantic-settings).

Each field reads the variable of its own name, upper-cased (`LEDGER_URL`), or the
alias it names (`WORKER_FETCH_INTERVAL_S`); the README's configuration table
lists them. Token lists are comma-separated. Secrets are SecretStr, so they never
print in logs, reprs or error bodies. The database URL is the caller's (the
embedded default when DATABASE_URL is unset: devstack/embedded.py), made to
follow the primary (engine/db.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from activities.provider_config import DEFAULT_PROVIDERS_FILE, ProviderConfig, load_providers
from engine.db import follow_primary
from service.principals import ROLES
from workflows.money import InvalidAmount, is_known_currency, parse_amount

Tokens = Annotated[tuple[SecretStr, ...], NoDecode]  # "a,b,c" in the environment
GroupRoles = Annotated[tuple[tuple[str, str], ...], NoDecode]  # (group, role) pairs
Thresholds = Annotated[tuple[tuple[str, int], ...], NoDecode]  # (currency, minor units)


def _env(name: str) -> AliasChoices:
    """Read from this variable (and, in code, the field's own name)."""
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    database_url: str
    providers_file: Path = DEFAULT_PROVIDERS_FILE
    api_tokens: Tokens = ()
    # People (service/identity.py): access tokens from this OpenID issuer (discovery at
    # its /.well-known/openid-configuration); None: nobody signs in, every ops call is 401.
    oidc_issuer: str | None = None
    oidc_client_id: str = ""
    oidc_client_secret: SecretStr | None = None  # None: a public client (PKCE only)
    oidc_audience: str | None = None  # an access token's `aud`; None: the client id
    oidc_roles_claim: str = "groups"
    oidc_group_roles: GroupRoles = ()  # "payments-resolvers=resolver,payments-admins=admin"
    oidc_leeway_s: int = Field(30, ge=0, le=300)  # clock skew allowed on exp/nbf/iat
    oidc_scopes: str = "openid email profile"
    # Where the issuer sends the console's sign-ins back (registered with it); None:
    # this request's own /console/callback (behind a proxy, set it).
    oidc_redirect_url: str | None = None
    # Signs the console's cookies; empty: a random key per process (sessions end with it).
    console_secret: SecretStr = SecretStr("")
    # One local admin for when the issuer is down: off unless both are set (docs/ops.md).
    break_glass_name: str | None = None
    break_glass_password_sha256: SecretStr | None = None
    ledger_url: str = "http://127.0.0.1:8090/ledger"
    ledger_token: SecretStr = SecretStr("")
    ledger_timeout_s: float = 5.0
    # Continuous reconciliation with the ledger (service/reconciliation.py): one worker
    # runs it once the last run began this long ago; 0, or no LEDGER_TOKEN: off.
    reconcile_every_s: int = Field(60, ge=0)
    reconcile_page_size: int = Field(500, ge=1, le=1000)  # holds per ledger request
    # The rollout gate and the providers are live configuration in PostgreSQL
    # (service/live_config.py): these files (and ROLLOUT_CASCADE_PERCENT,
    # ROLLOUT_HEALTH_ROUTING) only seed a scope that has none yet.
    rollout_file: Path | None = None
    rollout_cascade_percent: int | None = Field(None, ge=0, le=100)
    config_scope: str = Field("default", min_length=1, max_length=200)
    # The safety net under LISTEN/NOTIFY: every process re-reads this often.
    config_refresh_s: float = Field(2.0, gt=0, le=5)
    nats_url: str | None = None  # None: the JetStream bridge does not run
    # Rows the relay reads at a time: fewer, larger batches cost less per event
    # (bench/relay_rate.py: 2000 the fastest of 500, 1000 and 2000; docs/capacity.md).
    outbox_batch: int = Field(2000, ge=1)
    outbox_retention_s: float = Field(7 * 86400, gt=0)
    outbox_relay_pause_s: float = Field(0.0, ge=0)  # test knob: pause between publishes
    core_callback_url: str | None = None  # None: outcome callbacks are off
    core_callback_token: SecretStr = SecretStr("")
    webhook_tolerance_s: int = 300
    max_body_bytes: int = 64 * 1024
    max_cascade: int = 32
    # Transient failures (an ambiguous ledger or provider answer, a database away) are
    # retried with waits of base, 2·base, 4·base, … capped at cap: about an hour by default.
    activity_max_retries: int = Field(70, ge=0)
    activity_retry_base_s: float = Field(1.0, gt=0)
    activity_retry_cap_s: float = Field(60.0, gt=0)
    # Idle, a worker waits for LISTEN/NOTIFY; these polls are the safety net (and
    # what starts a retry whose delay ran out: up to fetch_interval_s late).
    fetch_interval_s: float = Field(5.0, validation_alias=_env("WORKER_FETCH_INTERVAL_S"))
    timer_pump_interval_s: float = 0.2  # only while it cannot LISTEN
    heartbeat_s: float = Field(10.0, validation_alias=_env("WORKER_HEARTBEAT_S"))
    # a dead worker's jobs start again after this
    stalled_after_s: float = Field(30.0, validation_alias=_env("WORKER_STALLED_AFTER_S"))
    maintenance_every_s: int = Field(15, ge=1, le=59)  # stalled jobs and the sweep
    sweep_grace_s: float = Field(60.0, gt=0)
    # Activities a process runs at once right after the transitions it commits
    # (engine/inline.py); once one has waited sweep_grace_s / 4, or at 0, steps are jobs.
    inline_steps: int = Field(8, ge=0)
    # ... and sooner, once one has waited this long (None: only the grace's quarter).
    # Short, a burst beyond this process's CPU goes to the workers, at about three
    # commits a step handed over (docs/capacity.md).
    inline_max_wait_s: float | None = Field(None, gt=0)
    # "module:attribute" of the workflow definitions this build drives (every version
    # with withdrawals in flight; docs/upgrades.md). Another value is for tests.
    workflow_definitions: str = "workflows.registry:DEFINITIONS"
    # Routing (health_cascade withdrawals): how often one worker moves the circuits,
    # and how long a withdrawal whose every provider is unhealthy may wait for one.
    health_every_s: int = Field(5, ge=1, le=59)
    health_max_wait_s: float = Field(900.0, ge=0)
    # The cohort guard (service/cohort_guard.py): how often the workers' checks judge
    # the cascade cohorts against single-shot (at most; one worker at a time).
    guard_every_s: float = Field(30.0, gt=0)
    # The settle objective's deadline: final or in manual check this long after
    # submission (service/settle_slo.py); None: the longest webhook SLA plus 300 s.
    settle_slo_s: float | None = Field(None, gt=0)
    rollout_health_routing: bool | None = None  # None: the rollout file says (default on)
    # How long a request waits for a database connection before answering 503.
    db_acquire_timeout_s: float = Field(5.0, gt=0)
    # Each API key's limits unless the key sets its own (service/api_keys.py): a token
    # bucket and requests in flight, across every API process. A slot held by a
    # process that died comes back after api_key_lease_s.
    api_key_rate_per_s: float = Field(100.0, gt=0)
    api_key_burst: int = Field(200, ge=1)
    api_key_max_in_flight: int = Field(50, ge=1)
    api_key_lease_s: float = Field(60.0, gt=0)
    api_key_rotation_grace_s: int = Field(86400, ge=0)  # the old key's life after rotation
    # Each provider's webhook ingest, across every API process (generous: a provider
    # retries a 429, but a burst after its own outage is normal).
    webhook_rate_per_s: float = Field(1000.0, gt=0)
    webhook_burst: int = Field(2000, ge=1)
    # Four-eyes on money (service/approvals.py): a manual-check decision that needs a
    # second person is a proposal until an approver approves it: every positive one
    # (money leaves), and any above its currency's amount ("EUR=1000.00,USD=1000.00",
    # exact minor units). A proposal nobody decided expires after four_eyes_ttl_s.
    four_eyes_positive: bool = True
    four_eyes_above: Thresholds = ()
    four_eyes_ttl_s: int = Field(86400, ge=60)
    # The audit trail over time (service/history.py, service/archive.py; docs/ops.md
    # "Retention and the archive"): month partitions made this many months ahead; a
    # month leaves the hot tables retention_days after its end, once every withdrawal
    # submitted in it may, into ARCHIVE_DIR (shared by every worker host). None: no
    # archiving, every month stays. archive_block: withdrawals per block of the files.
    partitions_ahead: int = Field(3, ge=1, le=24)
    retention_days: int = Field(90, ge=1)
    archive_dir: Path | None = None
    archive_block: int = Field(2000, ge=1)

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(SecretStr(t.strip()) for t in value.split(",") if t.strip())
        return value

    @field_validator("oidc_group_roles", mode="before")
    @classmethod
    def _group_role_pairs(cls, value: object) -> object:
        """`group=role,group=role`: a group may name several roles, a role several groups."""
        if not isinstance(value, str):
            return value
        pairs = [p.strip().rpartition("=") for p in value.split(",") if p.strip()]
        for group, _, role in pairs:
            if not group.strip() or role.strip() not in ROLES:
                raise ValueError(f"OIDC_GROUP_ROLES: want group=role, role one of {ROLES}")
        return tuple((group.strip(), role.strip()) for group, _, role in pairs)

    @field_validator("four_eyes_above", mode="before")
    @classmethod
    def _amounts_per_currency(cls, value: object) -> object:
        """`EUR=1000.00,USD=1000.00`, parsed exactly (workflows/money.py): never a float."""
        if not isinstance(value, str):
            return value
        limits: dict[str, int] = {}
        for item in (p.strip() for p in value.split(",") if p.strip()):
            currency, _, amount = (part.strip() for part in item.partition("="))
            if not is_known_currency(currency) or currency in limits:
                raise ValueError(f"FOUR_EYES_ABOVE: want CUR=amount, each currency once: {item!r}")
            try:
                limits[currency] = parse_amount(amount, currency)
            except InvalidAmount as exc:
                raise ValueError(f"FOUR_EYES_ABOVE: {currency}: {exc}") from None
        return tuple(sorted(limits.items()))

    @property
    def oidc_token_audience(self) -> str:
        return self.oidc_audience or self.oidc_client_id

    @classmethod
    def from_env(cls, database_url: str) -> Settings:
        """The environment's settings, for this database (following its primary)."""
        return cls(database_url=follow_primary(database_url))

    def providers(self) -> dict[str, ProviderConfig]:
        return load_providers(self.providers_file)
