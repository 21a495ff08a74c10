"""The withdrawal workflow's activities: ledger and provider calls turned into events."""

from __future__ import annotations

from typing import Protocol

from activities import metrics as activity_metrics
from activities.ledger import FreezeResult, Hold, LedgerClient
from activities.outcomes import Verdict
from activities.providers import OrderRequest, OrderStatus, ProviderAdapter, StatusResult
from activities.withdrawal_rows import WithdrawalTaskRow, attempt_of, withdrawal_of
from engine.activity import Activity, ActivityContext
from workflows.core import Event
from workflows.money import format_minor
from workflows.withdrawal_events import (
    FundsCommitted,
    FundsFrozen,
    FundsInsufficient,
    FundsReleased,
    HoldFound,
    KeyVoided,
    NoHold,
    OrderAccepted,
    OrderAmbiguous,
    OrderDeclined,
    OrderSubmitting,
    OrderThrottled,
    ProviderFailed,
    ProviderNotFound,
    ProviderPending,
    ProviderSucceeded,
    StatusUnknown,
)


def _amount(ctx: ActivityContext) -> str:
    withdrawal = withdrawal_of(ctx.queue)
    return format_minor(int(withdrawal["amount_minor"]), str(withdrawal["currency"]))


def status_event(result: StatusResult, speaker: str, *, solicited: bool = False) -> Event:
    """Map a provider status (from a status call or a webhook) to an event.

    `speaker` is the provider that said it; the task machine refuses an
    observation from any provider but the task's own. `solicited`: the answer to
    our own status call.
    """
    ref = result.provider_ref
    match result.status:
        case OrderStatus.SUCCEEDED:
            return ProviderSucceeded(ref, speaker=speaker, solicited=solicited)
        case OrderStatus.FAILED:
            return ProviderFailed(
                result.reason or "provider_failed", ref, speaker=speaker, solicited=solicited
            )
        case OrderStatus.PENDING:
            return ProviderPending(ref, speaker=speaker, solicited=solicited)
        case OrderStatus.NOT_FOUND:
            return ProviderNotFound(speaker=speaker, solicited=solicited)
        case _:
            return StatusUnknown(result.reason or "unknown", speaker=speaker, solicited=solicited)


class AdapterSource(Protocol):
    """Each provider's adapter as a version of its settings configures it
    (activities/provider_adapters.py VersionedAdapters)."""

    def adapter(self, provider: str, version: int | None = None) -> ProviderAdapter | None: ...


class UnknownProvider(LookupError):
    """The task's provider is in no version of the settings this process knows."""


class WithdrawalActivities:
    def __init__(self, ledger: LedgerClient, adapters: AdapterSource) -> None:
        self._ledger = ledger
        self._adapters = adapters

    def registry(self) -> dict[str, Activity]:
        return {
            "freeze": Activity(self.freeze),
            "create_order": Activity(self.create_order),
            "check_status": Activity(self.check_status),
            "commit": Activity(self.commit, guarded=False),
            "release": Activity(self.release, guarded=False),
            "void": Activity(self.void),
            "look": Activity(self.look),
        }

    async def freeze(self, ctx: ActivityContext) -> Event:
        withdrawal = withdrawal_of(ctx.queue)
        hold = Hold(
            str(ctx.task["id"]),
            attempt_of(ctx.task)["provider"],
            str(withdrawal["currency"]),
            _amount(ctx),
            order_id=withdrawal["order_id"],
        )
        result = await self._ledger.freeze(hold, ctx.headers)
        if result in (FreezeResult.FROZEN, FreezeResult.REPLAYED):
            return FundsFrozen(replayed=result == FreezeResult.REPLAYED)
        # Nothing frozen: too little balance, or a hold released before (a replay
        # after a lost commit). Either way skip the task, with the ledger's reason.
        return FundsInsufficient(reason=result.value)

    async def create_order(self, ctx: ActivityContext) -> Event:
        attempt = attempt_of(ctx.task)
        if not attempt["order_submitted"]:
            # First note durably that the order may exist from now on; the
            # transition defers this activity again, which then sends it.
            return OrderSubmitting()
        adapter = self._adapter_for(attempt)
        currency = str(withdrawal_of(ctx.queue)["currency"])
        request = OrderRequest(str(attempt["id"]), _amount(ctx), currency)
        result = await adapter.create_order(request, ctx.headers)
        activity_metrics.PROVIDER_OUTCOMES.labels(adapter.name, "create", result.verdict).inc()
        if result.verdict == Verdict.ACCEPTED:
            assert result.provider_ref is not None
            return OrderAccepted(result.provider_ref, paid=result.paid)
        if result.verdict == Verdict.DECLINED:
            return OrderDeclined(result.reason)
        if result.verdict == Verdict.THROTTLED:
            return OrderThrottled(result.retry_after_s, result.reason)
        return OrderAmbiguous(result.reason)

    async def check_status(self, ctx: ActivityContext) -> Event:
        adapter = self._adapter_for(attempt_of(ctx.task))
        result = await adapter.get_status(str(ctx.task["id"]), ctx.headers)
        activity_metrics.PROVIDER_OUTCOMES.labels(adapter.name, "status", result.status).inc()
        return status_event(result, adapter.name, solicited=True)

    def _adapter_for(self, attempt: WithdrawalTaskRow) -> ProviderAdapter:
        """The provider as the settings the withdrawal started with configure it."""
        found = self._adapters.adapter(attempt["provider"], attempt.get("providers_version"))
        if found is None:
            raise UnknownProvider(f"provider {attempt['provider']!r} is not configured")
        return found

    async def commit(self, ctx: ActivityContext) -> Event:
        await self._ledger.commit(str(ctx.task["id"]), ctx.headers)
        return FundsCommitted()

    async def void(self, ctx: ActivityContext) -> Event:
        """Before an unstarted task ends (version 3): money under its key means a timeline
        the database lost started it; otherwise the key is voided, so that no freeze
        from any timeline lands on it later."""
        key = str(ctx.task["id"])
        status = await self._ledger.hold_status(key, ctx.headers)
        if status in ("frozen", "committed"):
            return HoldFound(status)
        if status is None:
            await self._ledger.rollback(key, ctx.headers)
        return KeyVoided()

    async def look(self, ctx: ActivityContext) -> Event:
        """Before an unstarted task is passed over (version 4): money under its key
        means a timeline the database lost started it. Nothing is voided: the task
        may still be tried, with this key."""
        status = await self._ledger.hold_status(str(ctx.task["id"]), ctx.headers)
        if status in ("frozen", "committed"):
            return HoldFound(status)
        return NoHold()  # nothing, or a hold released or voided: a freeze would say so

    async def release(self, ctx: ActivityContext) -> Event:
        await self._ledger.rollback(str(ctx.task["id"]), ctx.headers)
        return FundsReleased()
