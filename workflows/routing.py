"""Health- and limit-aware routing: the queue rule's choice of the next attempt. Pure.

The plain rule starts the cheapest pending task. With routing, the shell gives a
verdict per pending task, in fee order (service/routing.py):

- **Admit**: start it. Unhealthy tasks before it are SKIPPED (`provider_unhealthy`):
  no freeze, no call, an audit row that says why.
- **Limited** (its provider is at its concurrency or rate limit): hold the queue
  on it until the limit allows (a durable timer), skipping the unhealthy ones
  before it. Limits delay an attempt; they never fail it.
- **Unhealthy** on every pending task: hold the first one until the earliest
  probe of a recovering provider, for as long as the queue may wait in all;
  after that, skip them all and the withdrawal fails, releasing nothing it
  did not hold.
"""

from __future__ import annotations

from collections.abc import Sequence

from workflows.core import Admit, Hold, Limited, QueueDecision, Routing, TaskView, Unhealthy

UNHEALTHY = "provider_unhealthy"
ALL_UNHEALTHY = "all_providers_unhealthy"


def route(pending: Sequence[TaskView], routing: Routing, failed_status: str) -> QueueDecision:
    """`pending`: in position order, not empty. `failed_status`: the queue's status
    when nothing is left to try."""
    skipped: list[tuple[str, str]] = []
    probes: list[Unhealthy] = []
    for task in pending:
        verdict = routing.verdicts.get(task.task_id, Admit())
        if isinstance(verdict, Admit):
            return QueueDecision(None, start=(task.task_id,), skip=tuple(skipped))
        if isinstance(verdict, Limited):
            hold = Hold(task.task_id, verdict.until, verdict.reason)
            return QueueDecision(None, skip=tuple(skipped), hold=hold)
        skipped.append((task.task_id, UNHEALTHY))
        probes.append(verdict)
    if routing.now < routing.wait_until:
        first = min(p.probe_at for p in probes)
        return QueueDecision(
            None, hold=Hold(pending[0].task_id, min(first, routing.wait_until), ALL_UNHEALTHY)
        )
    return QueueDecision(failed_status, skip=tuple(skipped))
