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
from typing import Any, Protocol, TypeVar


class Scoped(Protocol):
    """State kept for one transaction (engine/scheduler.py's steps after commit):
    a savepoint that rolls back restores it to its snapshot."""

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...


S = TypeVar("S", bound=Scoped)


@dataclass
class _Scope:
    queued: list[Callable[[], None]] = field(default_factory=list)
    kept: dict[type, Scoped] = field(default_factory=dict)  # one object per kind


_pending: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "after_commit", default=None
)


def in_scope() -> bool:
    return _pending.get() is not None


def scoped(kind: type[S]) -> S | None:
    """The open scope's object of this kind (None: none kept, or no scope)."""
    scope = _pending.get()
    found = None if scope is None else scope.kept.get(kind)
    return found if isinstance(found, kind) else None


def keep(state: S) -> S:
    """Keep `state` for exactly as long as the open scope (one must be open)."""
    scope = _pending.get()
    assert scope is not None, "keep() needs an open transaction scope"
    scope.kept[type(state)] = state
    return state


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
    kept = dict(scope.kept)
    snapshots = {kind: state.snapshot() for kind, state in kept.items()}
    try:
        yield
    except BaseException:
        del scope.queued[mark:]
        scope.kept = kept  # what the savepoint began keeping is dropped
        for kind, state in kept.items():
            state.restore(snapshots[kind])
        raise
