"""The shell side of routing: verdicts on a queue's pending tasks, from the
providers' circuits (service/health.py) and limits, read and reserved in the
transaction that starts the chosen task (workflows/routing.py decides).

Verdicts go in fee order and stop at the first task that may start; only that
one's slot is taken (a rate token, a half-open probe). A provider's limits are
enforced across every worker by locking its `provider_limits` row: starts at
that provider serialise, and the in-flight count each sees is exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from activities.provider_config import LimitsConfig
from activities.withdrawal_rows import WithdrawalTaskRow, attempt_of, withdrawal_of
from engine.journal import Conn
from engine.rows import DbRow, QueueRow, TaskRow
from workflows.core import Admit, Limited, Routing, Unhealthy, Verdict, sql_literals
from workflows.withdrawal_events import AT_PROVIDER

CONCURRENCY, RATE = "concurrency_limit", "rate_limit"
BUSY_RETRY_S = 0.5  # a provider at its concurrency limit is asked again after this
HEALTH_ROUTED = "health_cascade"
_FOREVER = datetime.max.replace(tzinfo=UTC)

_CIRCUITS = "SELECT * FROM provider_circuits WHERE provider = ANY(%s)"
# Literals from the one constant, so the partial index order_tasks_in_flight serves it.
_IN_FLIGHT = f"""
SELECT count(*) AS n FROM order_tasks WHERE provider = %s
  AND status IN ({sql_literals(AT_PROVIDER)})
"""  # noqa: S608 - statuses from a constant, not from input
_LOCK_LIMITS = """
INSERT INTO provider_limits AS l (provider, tokens, refilled_at) VALUES (%s, %s, %s)
ON CONFLICT (provider) DO UPDATE SET provider = l.provider
RETURNING tokens, refilled_at
"""
_SPEND = "UPDATE provider_limits SET tokens = %s, refilled_at = %s WHERE provider = %s"
_TAKE_PROBE = """
UPDATE provider_circuits SET probes_left = probes_left - 1, updated_at = now()
WHERE provider = %s AND state = 'half_open' AND probes_left > 0 AND forced IS NULL
RETURNING probes_left
"""


@dataclass
class ProviderRouting:
    limits: Mapping[str, LimitsConfig]
    max_wait_s: float
    probe_retry_s: float  # a half-open circuit with no probe left: ask again after this
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def __call__(self, conn: Conn, queue: QueueRow, pending: list[TaskRow]) -> Routing:
        now = self.clock()
        withdrawal = withdrawal_of(queue)
        health = withdrawal["policy"] == HEALTH_ROUTED
        attempts = [attempt_of(task) for task in pending]
        circuits = await self._circuits(conn, attempts) if health else {}
        verdicts: dict[str, Verdict] = {}
        for task in attempts:
            verdict = await self._verdict(conn, task, circuits.get(task["provider"]), now)
            verdicts[str(task["id"])] = verdict
            if not isinstance(verdict, Unhealthy):
                break
        wait_until = _aware(withdrawal["created_at"]) + timedelta(seconds=self.max_wait_s)
        return Routing(verdicts, now, wait_until)

    async def _circuits(self, conn: Conn, pending: list[WithdrawalTaskRow]) -> dict[str, DbRow]:
        providers = sorted({t["provider"] for t in pending})
        rows = await (await conn.execute(_CIRCUITS, (providers,))).fetchall()
        return {str(r["provider"]): r for r in rows}

    async def _verdict(
        self, conn: Conn, task: WithdrawalTaskRow, circuit: DbRow | None, now: datetime
    ) -> Verdict:
        provider = task["provider"]
        state = _effective(circuit)
        if state == "open":
            assert circuit is not None
            forced = circuit["forced"] is not None
            probe_at = _FOREVER if forced else circuit["probe_at"]
            # A probe time that passed waits for the checks job to half-open the circuit.
            soonest = now + timedelta(seconds=self.probe_retry_s)
            return Unhealthy(max(probe_at or soonest, soonest), forced=forced)
        room = await self._room(conn, provider, str(task["id"]), now)
        if isinstance(room, Limited):
            return room
        probe = state == "half_open"
        if probe and await (await conn.execute(_TAKE_PROBE, (provider,))).fetchone() is None:
            return Unhealthy(now + timedelta(seconds=self.probe_retry_s))
        if room is not None:  # the order's rate token, spent only now that it starts
            await conn.execute(_SPEND, (room, now, provider))
        return Admit(probe=probe)

    async def _room(
        self, conn: Conn, provider: str, task_id: str, now: datetime
    ) -> Limited | float | None:
        """Limited; or room for one more order now: the bucket's tokens once its token
        is spent (None: no rate limit). The limits row stays locked until the
        transaction ends, so the count and the bucket hold for the start."""
        limits = self.limits.get(provider)
        if limits is None or (limits.max_in_flight is None and limits.rate_per_s is None):
            return None
        row = await (
            await conn.execute(_LOCK_LIMITS, (provider, float(limits.burst), now))
        ).fetchone()
        assert row is not None
        if limits.max_in_flight is not None:
            busy = await (await conn.execute(_IN_FLIGHT, (provider,))).fetchone()
            if busy is not None and busy["n"] >= limits.max_in_flight:
                return Limited(now + _jitter(task_id, BUSY_RETRY_S), CONCURRENCY)
        if limits.rate_per_s is None:
            return None
        elapsed: float = max((now - row["refilled_at"]).total_seconds(), 0.0)
        tokens = min(float(limits.burst), float(row["tokens"]) + elapsed * limits.rate_per_s)
        if tokens < 1.0:
            wait_s = (1.0 - tokens) / limits.rate_per_s
            return Limited(now + _jitter(task_id, wait_s), RATE)
        return tokens - 1.0


def _effective(circuit: DbRow | None) -> str:
    if circuit is None:
        return "closed"
    forced = circuit["forced"]
    return str(forced) if forced else str(circuit["state"])


def _jitter(task_id: str, seconds: float) -> timedelta:
    """`seconds` stretched by up to a quarter, the same for a task every time, so
    that tasks held together do not all come back in the same instant."""
    spread = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:2], "big") / 65535
    return timedelta(seconds=seconds * (1 + spread / 4))


def _aware(moment: datetime | str) -> datetime:
    """The queue row comes as columns or, from the engine's lock, as JSON."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
