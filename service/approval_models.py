"""Four-eyes on money at the HTTP edge: the bodies the approval routes take and the
answers they give (service/approvals_api.py), in the OpenAPI document too."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import Withdrawal
from workflows.withdrawal_events import TaskStatus

_TEXT = r"^[^\x00]*$"  # stored: PostgreSQL refuses NUL (checked again by parse_json)


class Approval(BaseModel):
    """An approver approves another person's proposal, optionally saying why."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    reason: str | None = Field(None, min_length=1, max_length=500, pattern=_TEXT)


class Rejection(BaseModel):
    """An approver rejects another person's proposal: the task stays in manual check."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    reason: str = Field(min_length=1, max_length=500, pattern=_TEXT)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProposalOut(_Out):
    """A manual-check decision waiting for, or decided by, a second person. People
    are named as the audit trail names them (their email and issuer subject)."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    task_id: str = Field(json_schema_extra={"format": "uuid"})
    queue_id: str = Field(json_schema_extra={"format": "uuid"})
    outcome: Literal["positive", "negative"]
    reason: str
    proposed_by: str
    proposed_at: datetime
    task_version: int = Field(description="The task's version the proposer saw")
    status: Literal["pending", "approved", "rejected", "expired", "superseded"]
    decided_by: str | None = Field(description="The approver; `system` for an expiry")
    decided_at: datetime | None
    decision_reason: str | None
    expires_at: datetime


class ProposalAccepted(_Out):
    """A decision that needs a second person: proposed, nothing moved yet."""

    proposal: ProposalOut


class PendingProposal(ProposalOut):
    order_id: str
    provider: str
    task_status: TaskStatus
    amount: str = Field(description="The withdrawal's amount, a decimal string")
    amount_minor: int
    currency: str


class PendingProposals(_Out):
    proposals: list[PendingProposal]


class ProposalDecided(_Out):
    """An approval (its decision applied) or a rejection, and the withdrawal after it."""

    proposal: ProposalOut
    withdrawal: Withdrawal
