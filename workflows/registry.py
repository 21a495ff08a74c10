"""Every workflow definition this build can drive, by name and version.

A withdrawal records the version of its definition when it starts
(`order_queues.workflow_version`) and is driven by that version until it ends,
so a deploy that changes the state machine never changes it for withdrawals
already half-way. New withdrawals start on the current version.

To change the state machine, add a version and keep the old one until no
withdrawal in flight uses it; a process refuses to start while withdrawals in
flight use a version it does not have (docs/upgrades.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from workflows.core import Storage, WorkflowDefinition
from workflows.withdrawal_definition import (
    WITHDRAWAL,
    WITHDRAWAL_V2,
    WITHDRAWAL_V3,
    WITHDRAWAL_V4,
)


class UnknownDefinition(LookupError):
    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"workflow {name} v{version} is not in this build")
        self.name = name
        self.version = version


class Definitions:
    """`current`: the version new workflows start on, by name (default: the highest)."""

    def __init__(
        self, *definitions: WorkflowDefinition, current: Mapping[str, int] | None = None
    ) -> None:
        self._by_key = {(d.name, d.version): d for d in definitions}
        if len(self._by_key) != len(definitions):
            raise ValueError("two definitions share a name and version")
        newest: dict[str, int] = {}
        for name, version in self._by_key:
            newest[name] = max(version, newest.get(name, version))
        self._current = {**newest, **(current or {})}
        for name, version in self._current.items():
            self.get(name, version)  # a current version must be one of them

    def get(self, name: str, version: int) -> WorkflowDefinition:
        try:
            return self._by_key[(name, version)]
        except KeyError:
            raise UnknownDefinition(name, version) from None

    def current(self, name: str) -> WorkflowDefinition:
        return self.get(name, self._current[name])

    def versions(self) -> frozenset[tuple[str, int]]:
        return frozenset(self._by_key)

    def storage(self) -> Storage:
        """Where every definition here keeps its instances (one engine, one place)."""
        places = {d.storage for d in self._by_key.values()}
        if len(places) != 1:
            raise ValueError("the definitions of one engine must share their storage")
        return places.pop()

    def live_statuses(self) -> frozenset[str]:
        """Every status in which some definition's task waits for something."""
        return frozenset().union(*(d.live_statuses for d in self._by_key.values()))


# Version 1 stays while withdrawals started before version 2 are in flight, and so on.
DEFINITIONS = Definitions(WITHDRAWAL, WITHDRAWAL_V2, WITHDRAWAL_V3, WITHDRAWAL_V4)
