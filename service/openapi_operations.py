"""The API's operations, as a table: each one's method and path, its request and
answer models, its credentials and the error statuses it can answer, and where
an answer's ids lead. service/openapi.py renders the table as the OpenAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from service import api_key_models as keys
from service import approval_models as approval
from service import config_models as config
from service import schemas as out
from service.models import (
    Cancellation,
    CircuitOverride,
    CoreCancellation,
    Replay,
    Resolution,
    WebhookBody,
    WithdrawalRequest,
)

_WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    ok: dict[int, type[BaseModel] | str]  # status -> model, or a media type for text
    security: str | None = None  # "bearer" (API_TOKENS) or "ops" (a person's access token)
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()  # beyond those implied by security, body and path
    headers: tuple[str, ...] = ()
    database: bool = True  # reads or writes PostgreSQL: may answer 503
    field_errors: bool = True  # a body of the wrong shape is a 422 (a webhook's: a 400)

    def error_statuses(self) -> list[int]:
        implied = set(self.errors)
        implied |= {401} if self.security else set()
        implied |= {403} if self.security == "ops" else set()  # signed in, lacking the role
        # an API key lacking the scope or the merchant; over the key's limits
        implied |= {403, 429} if self.security == "bearer" else set()
        implied |= {400, 413, 415} if self.body else set()
        implied |= {422} if self.body and self.field_errors else set()
        implied |= {404} if "{" in self.path else set()
        implied |= {503} if self.database else set()
        return sorted(implied)


CONFIG_OPERATIONS = [
    Operation(
        "get",
        "/ops/v1/config",
        "The live configuration in force (credentials as fingerprints)",
        {200: config.ConfigInForce},
        "ops",
    ),
    Operation(
        "get",
        "/ops/v1/config/{document}/history",
        "A configuration document's versions, newest first, each with who, why, old and new",
        {200: config.ConfigHistory},
        "ops",
        errors=(422,),
    ),
    Operation(
        "put",
        "/ops/v1/config/rollout",
        "Change the rollout gate (a new version, applied by every process within 5 s)",
        {200: config.ConfigChanged},
        "ops",
        config.RolloutChange,
        errors=(409,),
    ),
    Operation(
        "put",
        "/ops/v1/config/providers/{provider}",
        "Add or change a provider's settings (a new version; withdrawals in flight keep theirs)",
        {200: config.ConfigChanged},
        "ops",
        config.ProviderChange,
        errors=(409,),
    ),
    Operation(
        "post",
        "/ops/v1/config/providers/{provider}/remove",
        "Remove a provider for new withdrawals (a new version)",
        {200: config.ConfigChanged},
        "ops",
        config.ProviderRemoval,
        errors=(409,),
    ),
    Operation(
        "post",
        "/ops/v1/config/rollout/cohorts/{cohort}/restore",
        "Give a cohort moved back (by the cohort guard or a person) its own policy again, for"
        " new withdrawals (a new version); 409 when it is not moved back",
        {200: config.ConfigChanged},
        "ops",
        config.CohortRestore,
        errors=(409,),
    ),
]


APPROVAL_OPERATIONS = [
    Operation(
        "get",
        "/ops/v1/approvals",
        "Four-eyes proposals waiting for an approver, oldest first",
        {200: approval.PendingProposals},
        "ops",
    ),
    Operation(
        "post",
        "/ops/v1/approvals/{proposal_id}/approve",
        "Approve another person's proposal (approver): its decision is applied now; 409 when"
        " it is closed, expired or its task moved on (nothing is applied)",
        {200: approval.ProposalDecided},
        "ops",
        approval.Approval,
        (409,),
    ),
    Operation(
        "post",
        "/ops/v1/approvals/{proposal_id}/reject",
        "Reject another person's proposal (approver): the task stays in manual check",
        {200: approval.ProposalDecided},
        "ops",
        approval.Rejection,
        (409,),
    ),
]

API_KEY_OPERATIONS = [
    Operation(
        "post",
        "/ops/v1/api-keys",
        "Create an API key for cascade-core (admin; its value is answered once)",
        {201: keys.IssuedKey},
        "ops",
        keys.KeyCreation,
    ),
    Operation(
        "get",
        "/ops/v1/api-keys",
        "API keys (admin; never their values)",
        {200: keys.ApiKeys},
        "ops",
    ),
    Operation(
        "post",
        "/ops/v1/api-keys/{key_id}/rotate",
        "A new key like this one; this one lasts the grace period more (admin, audited)",
        {201: keys.IssuedKey},
        "ops",
        keys.KeyRotation,
        (409,),
    ),
    Operation(
        "post",
        "/ops/v1/api-keys/{key_id}/revoke",
        "Revoke a key: refused at once by every API process (admin, audited)",
        {200: keys.ApiKey},
        "ops",
        keys.KeyRevocation,
        (409,),
    ),
]

OPERATIONS = [
    Operation(
        "post",
        "/v1/withdrawals",
        "Submit a withdrawal (idempotent on order_id)",
        {201: out.Withdrawal, 200: out.Withdrawal},
        "bearer",
        WithdrawalRequest,
        (409,),
    ),
    Operation(
        "get",
        "/v1/withdrawals/{ident}",
        "A withdrawal with its tasks (by id or order_id)",
        {200: out.Withdrawal},
        "bearer",
    ),
    Operation(
        "get",
        "/v1/withdrawals/{ident}/events",
        "The audit timeline",
        {200: out.Events},
        "bearer",
    ),
    Operation(
        "post",
        "/v1/withdrawals/{ident}/cancel",
        "Cancel a withdrawal (an order already at a provider runs to its end)",
        {202: out.Withdrawal},
        "bearer",
        CoreCancellation,
        (409,),
    ),
    Operation(
        "post",
        "/webhooks/{provider}",
        "Provider webhook, signed per Standard Webhooks",
        {202: out.WebhookAck, 200: out.WebhookAck},
        body=WebhookBody,
        errors=(401, 429),
        field_errors=False,
        headers=_WEBHOOK_HEADERS,
    ),
    Operation(
        "get", "/ops/v1/manual-checks", "Tasks awaiting a person", {200: out.ManualChecks}, "ops"
    ),
    Operation(
        "post",
        "/ops/v1/tasks/{task_id}/resolve",
        "Decide a manual check (resolver): applied at once (200), or a proposal that waits"
        " for an approver (202) when four-eyes applies",
        {200: out.Withdrawal, 202: approval.ProposalAccepted},
        "ops",
        Resolution,
        (409,),
    ),
    Operation(
        "post",
        "/ops/v1/tasks/{task_id}/cancel",
        "Cancel one task (skip that provider)",
        {200: out.Withdrawal},
        "ops",
        Cancellation,
        (409,),
    ),
    Operation(
        "post",
        "/ops/v1/withdrawals/{ident}/cancel",
        "Cancel a withdrawal",
        {202: out.Withdrawal},
        "ops",
        Cancellation,
        (409,),
    ),
    Operation(
        "get",
        "/ops/v1/dead-letters",
        "Dead letters not yet replayed",
        {200: out.DeadLetters},
        "ops",
    ),
    Operation(
        "post",
        "/ops/v1/dead-letters/{dead_letter_id}/replay",
        "Replay a dead letter",
        {202: out.ReplayAccepted},
        "ops",
        Replay,
    ),
    Operation(
        "get", "/ops/v1/attention", "Withdrawals flagged for a person", {200: out.Attention}, "ops"
    ),
    Operation(
        "get",
        "/ops/v1/providers",
        "Each provider's circuit, recent outcomes, orders in flight and limits",
        {200: out.Providers},
        "ops",
    ),
    Operation(
        "post",
        "/ops/v1/providers/{provider}/circuit",
        "Force a provider's circuit open or closed, or back to automatic (audited)",
        {200: out.ProviderHealth},
        "ops",
        CircuitOverride,
    ),
    *API_KEY_OPERATIONS,
    *APPROVAL_OPERATIONS,
    *CONFIG_OPERATIONS,
    Operation("get", "/metrics", "Prometheus metrics", {200: "text/plain"}),
    Operation("get", "/healthz", "Liveness", {200: out.Status}, database=False),
    Operation("get", "/readyz", "Readiness (the database answers)", {200: out.Status}),
    Operation("get", "/openapi.json", "This document", {200: "application/json"}, database=False),
]


_WITHDRAWAL_ID = {"ident": "$response.body#/id"}
_FIRST_TASK_ID = {"task_id": "$response.body#/tasks/0/id"}
_NEW_KEY_ID = {"key_id": "$response.body#/key/id"}
_FIRST_PROPOSAL_ID = {"proposal_id": "$response.body#/proposals/0/id"}
# Where an answer's ids lead (OpenAPI links): clients, and schemathesis's stateful
# phase, can follow a new withdrawal to its reads, its cancels and its tasks.
LINKS: dict[tuple[str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("post", "/v1/withdrawals"): {
        "Read": ("get", "/v1/withdrawals/{ident}", _WITHDRAWAL_ID),
        "Events": ("get", "/v1/withdrawals/{ident}/events", _WITHDRAWAL_ID),
        "Cancel": ("post", "/v1/withdrawals/{ident}/cancel", _WITHDRAWAL_ID),
        "OpsCancel": ("post", "/ops/v1/withdrawals/{ident}/cancel", _WITHDRAWAL_ID),
        "ResolveTask": ("post", "/ops/v1/tasks/{task_id}/resolve", _FIRST_TASK_ID),
        "CancelTask": ("post", "/ops/v1/tasks/{task_id}/cancel", _FIRST_TASK_ID),
    },
    ("get", "/ops/v1/approvals"): {
        "Approve": ("post", "/ops/v1/approvals/{proposal_id}/approve", _FIRST_PROPOSAL_ID),
        "Reject": ("post", "/ops/v1/approvals/{proposal_id}/reject", _FIRST_PROPOSAL_ID),
    },
    ("post", "/ops/v1/api-keys"): {
        "Rotate": ("post", "/ops/v1/api-keys/{key_id}/rotate", _NEW_KEY_ID),
        "Revoke": ("post", "/ops/v1/api-keys/{key_id}/revoke", _NEW_KEY_ID),
    },
    ("get", "/ops/v1/dead-letters"): {
        "Replay": (
            "post",
            "/ops/v1/dead-letters/{dead_letter_id}/replay",
            {"dead_letter_id": "$response.body#/dead_letters/0/id"},
        )
    },
}
