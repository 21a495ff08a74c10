"""Four-eyes on money, the rules: which manual-check decisions need a second person,
who may decide a proposal, and whether it may still take effect. Pure, so they
are tested without a database; service/approvals.py carries them out.

A decision needs a second person when it is positive (the money leaves; on unless
FOUR_EYES_POSITIVE=false) or its withdrawal's amount is above its currency's
FOUR_EYES_ABOVE amount (exact minor units, never a float). A proposal is decided
by a person with `approver` who is not its proposer (the same issuer and subject
is the same person, whatever their email says). It may take effect while its task
is still in manual check at the version the proposer saw, and until it expires.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.rows import QueueRow
from service.models import BadRequest
from service.principals import APPROVER, Principal
from service.settings import Settings
from workflows.withdrawal_events import TaskStatus

PENDING, APPROVED, REJECTED, EXPIRED, SUPERSEDED = (
    "pending",
    "approved",
    "rejected",
    "expired",
    "superseded",
)


@dataclass(frozen=True)
class FourEyesRules:
    """Which decisions need a second person. `above`: currency -> minor units."""

    every_positive: bool = True
    above: Mapping[str, int] = field(default_factory=dict)
    ttl: timedelta = timedelta(hours=24)

    @classmethod
    def from_settings(cls, settings: Settings) -> FourEyesRules:
        ttl = timedelta(seconds=settings.four_eyes_ttl_s)
        return cls(settings.four_eyes_positive, dict(settings.four_eyes_above), ttl)

    def needs_approval(self, positive: bool, amount_minor: int, currency: str) -> bool:
        """Positive decisions (money leaves), and any above its currency's amount."""
        limit = self.above.get(currency)
        return (positive and self.every_positive) or (limit is not None and amount_minor > limit)


@dataclass(frozen=True)
class Proposal:
    id: str
    task_id: str
    queue_id: str
    outcome: str  # positive or negative
    reason: str
    proposed_by: str  # the proposer's audit actor (Principal.actor)
    proposer_issuer: str
    proposer_subject: str
    proposed_at: datetime
    task_version: int
    status: str
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    expires_at: datetime

    def view(self) -> dict[str, Any]:
        """The JSON answer: who by their actor (which names their subject too)."""
        hidden = ("proposer_issuer", "proposer_subject")
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in asdict(self).items()
            if k not in hidden
        }

    def proposed_by_person(self, person: Principal) -> bool:
        return (self.proposer_issuer, self.proposer_subject) == (person.issuer, person.subject)


@dataclass(frozen=True)
class TaskNow:
    """The task as it stands, under its lock."""

    queue: QueueRow  # its withdrawal's row, for the journal
    status: str
    version: int
    target: str | None
    amount_minor: int
    currency: str


def decider_refusal(proposal: Proposal, person: Principal) -> BadRequest | None:
    """Why `person` may not approve or reject `proposal` (403), if they may not."""
    if not person.may(APPROVER):
        return BadRequest(403, "forbidden", "this needs the approver role")
    if proposal.proposed_by_person(person):
        return BadRequest(403, "own_proposal", "another person than its proposer must decide it")
    if proposal.status != PENDING:
        return BadRequest(409, "proposal_closed", f"the proposal is already {proposal.status}")
    return None


def why_not_current(proposal: Proposal, task: TaskNow, now: datetime) -> str | None:
    """`expired` or `superseded` when a pending proposal can no longer take effect."""
    if now >= proposal.expires_at:
        return EXPIRED
    moved = task.version != proposal.task_version or task.status != TaskStatus.MANUAL_CHECK
    return SUPERSEDED if moved else None


def refusal(stale: str, proposal: Proposal, task: TaskNow) -> BadRequest:
    """The 409 for an approval or rejection of a proposal that is no longer current."""
    if stale == EXPIRED:
        when = proposal.expires_at.isoformat()
        return BadRequest(409, "proposal_expired", f"the proposal expired at {when}")
    return BadRequest(
        409,
        "proposal_superseded",
        f"the task moved on since the proposal (version {proposal.task_version} -> "
        f"{task.version}, now {task.status}): nothing was applied; decide it again",
    )


def open_for_decision(task: TaskNow) -> None:
    """A decision needs a task waiting for one (the engine says the same when it applies)."""
    if task.status != TaskStatus.MANUAL_CHECK or task.target is not None:
        settling = f", settling to {task.target}" if task.target else ""
        raise BadRequest(409, "not_allowed", f"the task is {task.status}{settling}: no decision")
