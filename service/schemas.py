"""What the API answers, as pydantic models: the OpenAPI document is generated from
these (service/openapi.py), and the test suite checks every answer it receives
against that document, so the handlers and the description cannot drift apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workflows.withdrawal_events import Funds, QueueStatus, TaskStatus


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Out):
    field: str
    message: str


class ErrorBody(_Out):
    code: str = Field(description="Stable machine code, e.g. invalid_request, not_found")
    message: str
    details: list[ErrorDetail] | None = Field(None, description="Per field, on a 422")
    retry_after_s: int | None = Field(
        None, description="On a 429: seconds to wait before retrying (also `Retry-After`)"
    )


class Error(_Out):
    """Every 4xx and 5xx answers this object."""

    error: ErrorBody


class Task(_Out):
    id: str = Field(json_schema_extra={"format": "uuid"})
    position: int
    provider: str
    status: TaskStatus
    funds: Funds
    target: TaskStatus | None
    version: int
    provider_ref: str | None
    cancel_requested: bool
    recheck_attempts: int
    webhook_deadline: datetime | None
    last_reason: str | None
    updated_at: datetime


class Withdrawal(_Out):
    id: str = Field(json_schema_extra={"format": "uuid"})
    order_id: str
    merchant_id: str
    amount: str
    currency: str
    status: QueueStatus
    cancel_requested: bool
    policy: Literal["health_cascade", "cascade", "single_shot"]
    policy_reason: str | None
    requested_cascade: list[str]
    created_at: datetime
    finished_at: datetime | None
    tasks: list[Task]


class AuditEvent(_Out):
    id: int
    task_id: str | None
    from_state: str | None
    to_state: str
    event_type: str
    payload: dict[str, Any]
    actor: str
    trace_id: str | None
    occurred_at: datetime


class Events(_Out):
    events: list[AuditEvent]


class WebhookAck(_Out):
    status: Literal["accepted", "duplicate"]


class Status(_Out):
    status: str


class ManualCheck(_Out):
    task_id: str
    queue_id: str
    order_id: str
    provider: str
    provider_ref: str | None
    amount_minor: int
    currency: str
    last_reason: str | None
    waiting_since: datetime


class ManualChecks(_Out):
    tasks: list[ManualCheck]


class DeadLetter(_Out):
    id: int
    job_id: int
    task_name: str
    args: dict[str, Any]
    task_id: str | None
    queue_id: str | None
    attempts: int
    error: str
    created_at: datetime


class DeadLetters(_Out):
    dead_letters: list[DeadLetter]


class AttentionItem(_Out):
    id: str
    order_id: str
    status: QueueStatus
    attention_reason: str | None
    updated_at: datetime


class Attention(_Out):
    withdrawals: list[AttentionItem]


class ReplayAccepted(_Out):
    replay_job_id: int


class ProviderHealth(_Out):
    provider: str
    state: Literal["closed", "open", "half_open"]
    forced: Literal["open", "closed"] | None
    since: datetime | None
    probe_at: datetime | None
    probes_left: int | None
    reason: str | None
    recent: dict[str, int]  # outcomes over the provider's health window
    in_flight: int
    limits: dict[str, float]


class Providers(_Out):
    providers: list[ProviderHealth]
