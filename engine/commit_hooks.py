"""Work that may happen only once a transaction has committed.

A transition's metrics count only if it committed, and an activity it asked for
may run in this process only once its token is durable: run before the commit,
a rolled-back transition would leave money moved with no state that says so.
`transaction_scope()` wraps the outermost transaction; `on_commit(fn)` queues
`fn` until the scope ends without an exception, which is after the commit.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Scope:
    queued: list[Callable[[], None]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # what a scope's users keep in it


_pending: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "after_commit", default=None
)


def scope_notes() -> dict[str, Any] | None:
    """The open scope's scratch space (None outside a scope): state that lives
    exactly as long as one transaction."""
    scope = _pending.get()
    return None if scope is None else scope.notes


def on_commit(fn: Callable[[], None]) -> None:
    """Run `fn` now if no transaction scope is open, else when the scope commits."""
    scope = _pending.get()
    if scope is None:
        fn()
    else:
        scope.queued.append(fn)


@contextlib.contextmanager
def transaction_scope() -> Iterator[None]:
    """Wrap a transaction: what it queued runs only if the block succeeds."""
    if _pending.get() is not None:  # nested: the outermost scope decides
        yield
        return
    scope = _Scope()
    token = _pending.set(scope)
    try:
        yield
        queued = scope.queued
    finally:
        _pending.reset(token)
    for fn in queued:  # outside the scope: what they queue in turn runs at once
        fn()


@contextlib.contextmanager
def savepoint() -> Iterator[None]:
    """Wrap a nested transaction (a savepoint) inside a scope: if it rolls back,
    what it queued is forgotten too, so no step runs for a state never committed."""
    scope = _pending.get()
    if scope is None:
        yield
        return
    mark = len(scope.queued)
    saved = {k: dict(v) if isinstance(v, dict) else v for k, v in scope.notes.items()}
    try:
        yield
    except BaseException:
        del scope.queued[mark:]
        for key in [k for k in scope.notes if k not in saved]:
            del scope.notes[key]
        for key, value in saved.items():
            kept = scope.notes.get(key)
            if isinstance(kept, dict) and isinstance(value, dict):
                kept.clear()  # in place: a queued closure may hold this very dict
                kept.update(value)
            else:
                scope.notes[key] = value
        raise
