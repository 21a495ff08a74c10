"""The console's live configuration page (service/live_config.py): the rollout and
the providers in force, with version, who and why, and the recent history of both
as old -> new; for admins, forms that change them.

Each change is LiveConfig's own, as the ops API's and the command line's are: it
names the signed-in person as actor, requires a reason, and is validated whole
before anything is stored. Every form carries the version it was rendered from
(`expected`), so a change made meanwhile by someone else is refused as a conflict
rather than silently undone. A refused change re-renders the page with why;
nothing is stored.

Credentials are only ever shown as fingerprints. The provider form's JSON leaves
them out, which keeps the ones in force; a fingerprint shown on the page may be
written instead of a secret to keep that secret (a webhook secret's rotation:
`["whsec_new...", "sha256:<the old one's>"]`), so no secret is ever rendered.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from activities.provider_config import ProviderConfig
from engine.journal import Conn
from service import config_store
from service.api import services
from service.config_api import PROVIDER_NAME
from service.config_store import Document, VersionConflict
from service.config_views import fingerprint, history_view, redacted
from service.console_pages import Visitor, page, signed_post, visitor
from service.live_config import LiveConfig
from service.models import IDENT
from service.principals import ADMIN
from service.provider_documents import CREDENTIALS, parse_provider, provider_body
from service.rollout import Policy, RolloutConfig

HISTORY = 20  # versions shown per document
MAX_REASON = 500
_PAGE = RedirectResponse("/console/config", status_code=303)

# What a form asks for: (connection, actor, reason, expected version) -> new version.
Apply = Callable[[Conn, str, str, int | None], Awaitable[int]]


async def config_page(request: Request) -> Response:
    if (seen_by := await visitor(request)) is None:
        return RedirectResponse("/console/login", status_code=303)
    return await _render(request, seen_by)


async def _render(
    request: Request, seen_by: Visitor, error: str | None = None, status: int = 200
) -> Response:
    svc = services(request)
    async with svc.pool.connection() as conn:
        documents = {
            name: await _document(conn, svc.live.scope, name) for name in ("rollout", "providers")
        }
    rollout = RolloutConfig.model_validate(documents["rollout"]["body"])
    context = {
        **documents,
        "config": rollout,
        "editable": _editable(documents["providers"]["body"]),
        "policies": list(Policy),
        "may_change": seen_by.person.may(ADMIN),
        "error": error,
    }
    return page(request, "config.html", context, status, seen_by)


async def _document(conn: Conn, scope: str, name: Document) -> dict[str, Any]:
    """The version in force (credentials as fingerprints) and the recent history."""
    found = await config_store.history(conn, scope, name, HISTORY + 1)
    newest = found[0]
    return {
        "version": newest.version,
        "changed_by": newest.changed_by,
        "reason": newest.reason,
        "changed_at": newest.changed_at,
        "body": redacted(name, newest.body),
        "history": history_view(found[:HISTORY], found[HISTORY] if len(found) > HISTORY else None),
    }


def _editable(shown: dict[str, Any]) -> dict[str, str]:
    """Each provider's settings for its textarea: without credentials (kept), in
    the model's order (adapter and URL first), not JSONB's (shortest key first)."""
    fields = [f for f in ProviderConfig.model_fields if f not in CREDENTIALS]
    return {
        name: json.dumps({k: body[k] for k in fields if k in body}, indent=2)
        for name, body in shown.items()
    }


async def _changing(
    request: Request, build: Callable[[LiveConfig, dict[str, str], str], Apply]
) -> Response:
    """One admin form: checked (session, CSRF, role), built, applied; refused with
    the page and why, nothing stored."""
    checked = await signed_post(request, ADMIN)
    if isinstance(checked, Response):
        return checked
    seen_by, form = checked
    svc = services(request)
    try:
        reason, expected = _reason(form), _expected(form)
        apply = build(svc.live, form, request.path_params.get("provider", ""))
        async with svc.pool.connection() as conn:
            await apply(conn, seen_by.person.actor, reason, expected)
    except VersionConflict as exc:
        why = f"Not changed: {exc}. Someone changed it meanwhile: review it and try again."
        return await _render(request, seen_by, why, 409)
    except ValueError as exc:  # pydantic's ValidationError included
        return await _render(request, seen_by, f"Not changed: {_why(exc)}", 422)
    return _PAGE


def _rollout(live: LiveConfig, change: Callable[[RolloutConfig], RolloutConfig]) -> Apply:
    async def apply(conn: Conn, actor: str, reason: str, expected: int | None) -> int:
        return await live.change_rollout(
            conn, change, actor=actor, reason=reason, expected=expected
        )

    return apply


def _gate(live: LiveConfig, form: dict[str, str], _: str) -> Apply:
    text = form.get("cascade_percent", "").strip()
    if not text.isdigit():
        raise ValueError("cascade_percent: a whole number within 0..100")
    update = {"cascade_percent": int(text), "health_routing": form.get("health_routing") == "on"}
    return _rollout(live, lambda config: config.model_copy(update=update))


def _merchant_set(live: LiveConfig, form: dict[str, str], _: str) -> Apply:
    merchant, policy = _merchant(form), Policy(form.get("policy", ""))
    return _rollout(
        live,
        lambda config: config.model_copy(
            update={"merchants": {**config.merchants, merchant: policy}}
        ),
    )


def _merchant_removed(live: LiveConfig, form: dict[str, str], _: str) -> Apply:
    merchant = _merchant(form)

    def change(config: RolloutConfig) -> RolloutConfig:
        if merchant not in config.merchants:
            raise ValueError(f"merchant {merchant} has no override")
        kept = {m: p for m, p in config.merchants.items() if m != merchant}
        return config.model_copy(update={"merchants": kept})

    return _rollout(live, change)


def _restored(live: LiveConfig, form: dict[str, str], _: str) -> Apply:
    cohort = Policy(form.get("cohort", ""))

    def change(config: RolloutConfig) -> RolloutConfig:
        if cohort not in config.moved_back:
            raise ValueError(f"cohort {cohort} is not moved back")
        return config.restoring(cohort)

    return _rollout(live, change)


def _provider(live: LiveConfig, form: dict[str, str], name: str) -> Apply:
    if not PROVIDER_NAME.match(name):
        raise ValueError("no such provider")
    try:
        settings = json.loads(form.get("settings", ""))
    except json.JSONDecodeError as exc:
        raise ValueError(f"settings are not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(settings, dict):
        raise ValueError("settings must be a JSON object")

    def change(providers: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        kept = providers.get(name)
        if kept is None:
            raise ValueError("no such provider")
        return {**providers, name: parse_provider(name, _with_secrets(settings, kept), kept)}

    async def apply(conn: Conn, actor: str, reason: str, expected: int | None) -> int:
        return await live.change_providers(
            conn, change, actor=actor, reason=reason, expected=expected
        )

    return apply


def _with_secrets(settings: dict[str, Any], kept: ProviderConfig) -> dict[str, Any]:
    """The settings with each fingerprint of a credential in force replaced by
    that credential (a fingerprint that names none is refused)."""
    stored = provider_body(kept)
    in_force = [stored["api_key"], *stored["webhook_secrets"]]
    known = {fingerprint(secret): secret for secret in in_force}

    def resolved(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("sha256:"):
            if value not in known:
                raise ValueError(f"{value} is the fingerprint of no credential in force")
            return known[value]
        return value

    found = dict(settings)
    if "api_key" in found:
        found["api_key"] = resolved(found["api_key"])
    if isinstance(found.get("webhook_secrets"), list):
        found["webhook_secrets"] = [resolved(v) for v in found["webhook_secrets"]]
    return found


def _merchant(form: dict[str, str]) -> str:
    merchant = form.get("merchant", "").strip()
    if not IDENT.match(merchant):
        raise ValueError("merchant: an id of letters, digits and . _ : - (at most 64)")
    return merchant


def _reason(form: dict[str, str]) -> str:
    reason = form.get("reason", "").strip()
    if not reason or len(reason) > MAX_REASON or "\x00" in reason:
        raise ValueError(f"a reason is required (at most {MAX_REASON} characters)")
    return reason


def _expected(form: dict[str, str]) -> int | None:
    text = form.get("expected", "").strip()
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        raise ValueError("the form's version is not a number: reload the page")
    return int(text)


def _why(exc: ValueError) -> str:
    """What was wrong, by field; never the value given (it may be a secret)."""
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
    return str(exc)


async def change_gate(request: Request) -> Response:
    return await _changing(request, _gate)


async def set_merchant(request: Request) -> Response:
    return await _changing(request, _merchant_set)


async def remove_merchant(request: Request) -> Response:
    return await _changing(request, _merchant_removed)


async def restore_cohort(request: Request) -> Response:
    return await _changing(request, _restored)


async def change_provider(request: Request) -> Response:
    return await _changing(request, _provider)


CONFIG_PAGES: list[tuple[str, Any, list[str]]] = [
    ("/console/config", config_page, ["GET"]),
    ("/console/config/rollout", change_gate, ["POST"]),
    ("/console/config/merchants", set_merchant, ["POST"]),
    ("/console/config/merchants/remove", remove_merchant, ["POST"]),
    ("/console/config/restore", restore_cohort, ["POST"]),
    ("/console/config/providers/{provider}", change_provider, ["POST"]),
]
