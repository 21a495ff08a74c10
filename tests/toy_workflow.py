"""A toy workflow, to prove the engine generic: a queue of jobs, each tried once
with one retry, on its own tables. It knows nothing of withdrawals, and the
engine runs it unchanged (tests/test_toy_workflow.py).

A task: NEW → WORKING → DONE, or WORKING → WORKING (one retry) → FAILED;
CANCELLED from NEW or WORKING. The queue: any DONE completes it and stops the
rest; otherwise the next NEW task starts; none left: FAILED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from workflows.core import (
    Command,
    Event,
    IllegalTransition,
    QueueDecision,
    Routing,
    RunActivity,
    Storage,
    TaskView,
)
from workflows.registry import Definitions

TABLES = """
CREATE TABLE toy_queues (
    id uuid PRIMARY KEY, ticket text NOT NULL UNIQUE,
    workflow text NOT NULL DEFAULT 'toy', workflow_version integer NOT NULL DEFAULT 1,
    status text NOT NULL DEFAULT 'ACTIVE', cancel_requested boolean NOT NULL DEFAULT false,
    needs_attention boolean NOT NULL DEFAULT false, attention_reason text,
    trace_id text, traceparent text,
    updated_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz
);
CREATE TABLE toy_tasks (
    id uuid PRIMARY KEY, queue_id uuid NOT NULL REFERENCES toy_queues (id),
    position integer NOT NULL, status text NOT NULL DEFAULT 'NEW',
    version integer NOT NULL DEFAULT 0, activity text, activity_token integer,
    updated_at timestamptz NOT NULL DEFAULT now(),
    worker text NOT NULL, tries integer NOT NULL DEFAULT 0
);
CREATE TABLE toy_events (
    id bigserial PRIMARY KEY, queue_id uuid NOT NULL REFERENCES toy_queues (id),
    task_id uuid REFERENCES toy_tasks (id), from_state text, to_state text NOT NULL,
    event_type text NOT NULL, payload jsonb NOT NULL, actor text NOT NULL, trace_id text
);
"""
STORAGE = Storage(
    queues="toy_queues",
    tasks="toy_tasks",
    audit="toy_events",
    key="ticket",
    subject_prefix="toy",
    span_columns=("worker",),
)
TERMINAL = frozenset({"DONE", "FAILED", "CANCELLED"})


@dataclass(frozen=True)
class ToyState:
    status: str
    tries: int


@dataclass(frozen=True)
class Begin(Event):
    pass


@dataclass(frozen=True)
class Worked(Event):
    ok: bool


@dataclass(frozen=True)
class Halt(Event):
    reason: str = ""


def _decide(state: ToyState, event: Event) -> tuple[ToyState, list[Command]]:
    working = replace(state, status="WORKING", tries=state.tries + 1)
    match (state.status, event):
        case ("NEW", Begin()):
            return working, [RunActivity("work")]
        case ("WORKING", Worked(ok=True)):
            return replace(state, status="DONE"), []
        case ("WORKING", Worked(ok=False)) if state.tries < 2:
            return working, [RunActivity("work")]
        case ("WORKING", Worked(ok=False)):
            return replace(state, status="FAILED"), []
        case ("NEW" | "WORKING", Halt()):
            return replace(state, status="CANCELLED"), []
    raise IllegalTransition(state.status, event.name)


class ToyDefinition:
    name = "toy"
    version = 1
    storage = STORAGE
    terminal_statuses = TERMINAL
    live_statuses = frozenset({"WORKING"})
    routed = False

    def decide(self, state: Any, event: Event, now: datetime) -> tuple[Any, list[Command]]:
        return _decide(state, event)

    def load(self, row: Mapping[str, Any], context: Any) -> ToyState:
        return ToyState(str(row["status"]), int(row["tries"]))

    def dump(self, state: ToyState) -> dict[str, Any]:
        return {"status": state.status, "tries": state.tries}

    def status_of(self, state: ToyState) -> str:
        return state.status

    def queue_decide(
        self,
        queue_status: str,
        cancel_requested: bool,
        tasks: Sequence[TaskView],
        routing: Routing | None = None,
    ) -> QueueDecision:
        if queue_status != "ACTIVE":
            return QueueDecision(None)
        waiting = tuple(
            t.task_id for t in sorted(tasks, key=lambda t: t.position) if t.status == "NEW"
        )
        if any(t.status == "DONE" for t in tasks):
            return QueueDecision("COMPLETED", stop=waiting)
        if any(t.status == "WORKING" for t in tasks):
            return QueueDecision(None)
        if cancel_requested:
            return QueueDecision("CANCELLED", stop=waiting)
        return QueueDecision(None, start=waiting[:1]) if waiting else QueueDecision("FAILED")

    def task_view(self, row: Mapping[str, Any]) -> TaskView:
        return TaskView(str(row["id"]), row["position"], str(row["status"]))

    def try_order(self, tasks: Sequence[TaskView]) -> list[str]:
        return [t.task_id for t in sorted(tasks, key=lambda t: t.position) if t.status == "NEW"]

    def start_event(self) -> Event:
        return Begin()

    def stop_event(self) -> Event:
        return Halt("another task finished the queue")

    def cancel_event(self, actor: str, reason: str) -> Event:
        return Halt(reason)

    def timer_event(self, kind: str, due_at: datetime) -> Event:
        raise IllegalTransition("any", f"timer {kind}")

    def skip_event(self, reason: str) -> Event:
        return Halt(reason)

    def hold_event(self, until: datetime, reason: str) -> Event:
        raise IllegalTransition("any", "hold")


TOY_DEFINITIONS = Definitions(ToyDefinition())
