"""The live configuration's ops API bodies and answers (service/config_api.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.rollout import RolloutConfig


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Why(_Body):
    reason: str = Field(min_length=1, max_length=500, description="Why: kept in the history")
    expected_version: int | None = Field(
        None, ge=0, description="Refuse (409) unless this is the version in force"
    )


class RolloutChange(_Why):
    """The whole rollout document, as it should be from now on."""

    config: RolloutConfig


class ProviderChange(_Why):
    """One provider's settings (adds it, or replaces it whole). `api_key` and
    `webhook_secrets` may be left out to keep the ones in force; a rotation sends
    the new secret first and the old one after, until the provider signs with it."""

    settings: dict[str, Any]


class ProviderRemoval(_Why):
    """Withdrawals in flight keep the version they started with, the provider in it."""


class CohortRestore(_Why):
    """A cohort moved back (by the cohort guard or a person) gets its own policy again,
    for new withdrawals (service/cohort_guard_api.py)."""


class ConfigChanged(BaseModel):
    name: str
    version: int


class ConfigVersionView(BaseModel):
    name: str
    version: int
    changed_by: str
    reason: str
    changed_at: datetime
    body: dict[str, Any] = Field(description="Credentials shown as fingerprints")


class ConfigInForce(BaseModel):
    rollout: ConfigVersionView
    providers: ConfigVersionView


class ConfigDiff(BaseModel):
    path: str
    old: Any = None
    new: Any = None


class ConfigHistoryEntry(BaseModel):
    version: int
    changed_by: str
    reason: str
    changed_at: datetime
    changes: list[ConfigDiff] = Field(description="Against the version before; fingerprints")


class ConfigHistory(BaseModel):
    name: str
    versions: list[ConfigHistoryEntry]
