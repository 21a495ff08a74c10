"""Provider health, kept in PostgreSQL so that every process sees one picture.

- `HealthRecorder` (the engine's transition listener) writes an outcome row for
  each provider answer a transition applies (accepted, declined, ambiguous,
  throttled, succeeded, failed, timed out), in that transition's transaction,
  and counts routing's skips and holds.
- `evaluate` (a periodic job, one worker at a time) moves each provider's circuit
  from its sliding window (workflows/health.py) and audits every change.
- `force` is the operator's override (ops API and `service.ops circuit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from activities.provider_config import ProviderConfig
from activities.withdrawal_rows import attempt_of
from engine import commit_hooks
from engine.journal import Conn
from engine.rows import QueueRow, TaskRow
from service import withdrawal_metrics as metrics
from workflows.core import Event, sql_literals
from workflows.health import Circuit, HealthRules, Tally, next_circuit
from workflows.withdrawal_events import (
    AT_PROVIDER,
    Defer,
    OrderAccepted,
    OrderAmbiguous,
    OrderDeclined,
    OrderThrottled,
    ProviderFailed,
    ProviderSucceeded,
    Skip,
    TaskStatus,
    Wait,
)

_OUTCOME = {
    OrderAccepted: "accepted",
    OrderDeclined: "declined",
    OrderAmbiguous: "ambiguous",
    OrderThrottled: "throttled",
    ProviderSucceeded: "succeeded",
    ProviderFailed: "failed",
}
STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class HealthRecorder:
    async def __call__(
        self,
        conn: Conn,
        queue: QueueRow,
        task: TaskRow,
        event: Event,
        from_status: str,
        to_status: str,
    ) -> None:
        provider = attempt_of(task)["provider"]
        outcome = _OUTCOME.get(type(event))
        if to_status == TaskStatus.MANUAL_CHECK and from_status == TaskStatus.EXECUTING:
            outcome = "timed_out"  # the webhook SLA passed and the status stayed open
        if outcome is not None:
            await conn.execute(
                "INSERT INTO provider_outcomes (provider, outcome) VALUES (%s, %s)",
                (provider, outcome),
            )
        _count(provider, event)


def _count(provider: str, event: Event) -> None:
    if isinstance(event, Skip | Defer):  # passed over, for good or for now (version 4)
        reason = event.reason
        commit_hooks.on_commit(lambda: metrics.ROUTING_SKIPS.labels(provider, reason).inc())
    elif isinstance(event, Wait):
        held = max((event.until - datetime.now(UTC)).total_seconds(), 0.0)
        reason = event.reason

        def held_for() -> None:
            metrics.ROUTING_HOLDS.labels(provider, reason).inc()
            metrics.ROUTING_WAIT.labels(provider, reason).inc(held)

        commit_hooks.on_commit(held_for)
    elif isinstance(event, OrderThrottled):
        wait_s = event.retry_after_s
        commit_hooks.on_commit(lambda: metrics.THROTTLED_WAIT.labels(provider).inc(wait_s))


_TALLY = """
SELECT outcome, count(*) AS n FROM provider_outcomes
WHERE provider = %s AND at > %s GROUP BY 1
"""
_CHANGE = """
INSERT INTO provider_circuits AS c (provider, state, since, probe_at, probes_left, reason)
VALUES (%(provider)s, %(state)s, %(since)s, %(probe_at)s, %(probes_left)s, %(reason)s)
ON CONFLICT (provider) DO UPDATE SET state = excluded.state, since = excluded.since,
    probe_at = excluded.probe_at, probes_left = excluded.probes_left,
    reason = excluded.reason, updated_at = now()
"""
_AUDIT = """
INSERT INTO provider_circuit_events (provider, from_state, to_state, reason, actor)
VALUES (%s, %s, %s, %s, %s)
"""


async def evaluate(conn: Conn, rules: Mapping[str, HealthRules], now: datetime) -> list[str]:
    """Move every provider's circuit; returns the providers whose circuit moved."""
    moved: list[str] = []
    async with conn.transaction():
        rows = await (
            await conn.execute("SELECT * FROM provider_circuits ORDER BY provider FOR UPDATE")
        ).fetchall()
        circuits = {str(r["provider"]): _circuit(r) for r in rows}
        for provider, rule in sorted(rules.items()):
            circuit = circuits.get(provider) or Circuit("closed", now - timedelta(days=1))
            start = max(now - timedelta(seconds=rule.window_s), circuit.since)
            counts = await (await conn.execute(_TALLY, (provider, start))).fetchall()
            tally = Tally({str(r["outcome"]): int(r["n"]) for r in counts})
            new = next_circuit(circuit, tally, rule, now)
            if new is not circuit:
                await _write(conn, provider, circuit.state, new, "health")
                moved.append(provider)
        oldest = now - timedelta(seconds=2 * max((r.window_s for r in rules.values()), default=60))
        await conn.execute("DELETE FROM provider_outcomes WHERE at < %s", (oldest,))
    return moved


async def _write(conn: Conn, provider: str, was: str, new: Circuit, actor: str) -> None:
    await conn.execute(_CHANGE, {"provider": provider, **asdict(new)})
    await conn.execute(_AUDIT, (provider, was, new.state, new.reason or "", actor))
    state = new.state
    commit_hooks.on_commit(lambda: metrics.CIRCUIT_CHANGES.labels(provider, state).inc())


def _circuit(row: Mapping[str, Any]) -> Circuit:
    return Circuit(
        str(row["state"]), row["since"], row["probe_at"], int(row["probes_left"]), row["reason"]
    )


async def force(conn: Conn, provider: str, state: str | None, actor: str, reason: str) -> None:
    """An operator forces the circuit open or closed (None: back to automatic)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO provider_circuits (provider) VALUES (%s) ON CONFLICT DO NOTHING",
            (provider,),
        )
        row = await (
            await conn.execute(
                "SELECT state, forced FROM provider_circuits WHERE provider = %s FOR UPDATE",
                (provider,),
            )
        ).fetchone()
        assert row is not None
        await conn.execute(
            "UPDATE provider_circuits SET forced = %s, updated_at = now() WHERE provider = %s",
            (state, provider),
        )
        was = f"forced_{row['forced']}" if row["forced"] else str(row["state"])
        to = f"forced_{state}" if state else "automatic"
        await conn.execute(_AUDIT, (provider, was, to, reason, actor))


def health_rules(providers: Mapping[str, ProviderConfig]) -> dict[str, HealthRules]:
    return {name: config.health.to_rules() for name, config in providers.items()}


async def evaluate_health(rules: Mapping[str, HealthRules], conn: Conn) -> list[str]:
    """The periodic `checks` job's work (engine/jobs.py)."""
    return await evaluate(conn, rules, datetime.now(UTC))


_REPORT = f"""
SELECT p.provider, coalesce(c.state, 'closed') AS state, c.forced, c.since, c.probe_at,
       c.probes_left, c.reason,
       (SELECT coalesce(jsonb_object_agg(outcome, n), '{{}}') FROM (
            SELECT outcome, count(*) AS n FROM provider_outcomes o
            WHERE o.provider = p.provider AND o.at > now() - make_interval(secs => p.window_s)
            GROUP BY 1) AS w) AS recent,
       (SELECT count(*) FROM order_tasks t WHERE t.provider = p.provider
          AND t.status IN ({sql_literals(AT_PROVIDER)})) AS in_flight
FROM unnest(%s::text[], %s::float8[]) AS p(provider, window_s)
LEFT JOIN provider_circuits c USING (provider)
ORDER BY p.provider
"""  # noqa: S608 - statuses from a constant, not from input


async def report(conn: Conn, providers: Mapping[str, ProviderConfig]) -> list[dict[str, Any]]:
    """Each configured provider's circuit, its outcomes over its window, its orders
    in flight and its limits (ops API and `service.ops providers`)."""
    names = sorted(providers)
    windows = [providers[n].health.window_s for n in names]
    rows = await (await conn.execute(_REPORT, (names, windows))).fetchall()
    return [
        {**row, "limits": providers[str(row["provider"])].limits.model_dump(exclude_none=True)}
        for row in rows
    ]
