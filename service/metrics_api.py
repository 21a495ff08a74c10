"""`GET /metrics`: this process's counters plus the gauges that live in the database."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from engine import metrics
from service import history_metrics, reconciliation_metrics, withdrawal_metrics
from service.api import services
from service.health import STATE_VALUE

_DB_GAUGES = """
SELECT
    (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL) AS dlq,
    (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS backlog,
    (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
       FROM outbox WHERE published_at IS NULL) AS lag,
    (SELECT count(*) FROM order_tasks WHERE status = 'MANUAL_CHECK') AS manual,
    (SELECT count(*) FROM procrastinate_workers
       WHERE last_heartbeat > now() - make_interval(secs => %s)) AS alive,
    (SELECT coalesce(extract(epoch FROM now() - max(last_heartbeat)), -1)
       FROM procrastinate_workers) AS heartbeat_age
"""
_STATES = "SELECT status::text AS state, count(*) AS n FROM order_tasks GROUP BY 1"
_WITHDRAWALS = "SELECT status::text AS status, count(*) AS n FROM order_queues GROUP BY 1"
_CIRCUITS = "SELECT provider, coalesce(forced, state) AS state FROM provider_circuits"


async def metrics_endpoint(request: Request) -> Response:
    async with services(request).pool.connection() as conn:
        stalled_after = services(request).settings.stalled_after_s
        gauges = await (await conn.execute(_DB_GAUGES, (stalled_after,))).fetchone()
        states = await (await conn.execute(_STATES)).fetchall()
        circuits = await (await conn.execute(_CIRCUITS)).fetchall()
        withdrawals = await (await conn.execute(_WITHDRAWALS)).fetchall()
        await reconciliation_metrics.export(conn, services(request).settings)
        await history_metrics.export(conn, services(request).settings)
    assert gauges is not None
    metrics.DLQ_SIZE.set(gauges["dlq"])
    metrics.OUTBOX_BACKLOG.set(gauges["backlog"])
    metrics.OUTBOX_LAG.set(float(gauges["lag"]))
    withdrawal_metrics.MANUAL_CHECKS.set(gauges["manual"])
    metrics.WORKERS_ALIVE.set(gauges["alive"])
    metrics.WORKER_HEARTBEAT_AGE.set(float(gauges["heartbeat_age"]))
    metrics.TASKS_IN_STATE.clear()
    for row in states:
        metrics.TASKS_IN_STATE.labels(row["state"]).set(row["n"])
    for row in withdrawals:  # every process's outcome counters, in one place, from SQL
        withdrawal_metrics.WITHDRAWALS.labels(row["status"]).set(row["n"])
    seen = {str(r["provider"]): STATE_VALUE[str(r["state"])] for r in circuits}
    for provider in services(request).providers:
        withdrawal_metrics.PROVIDER_CIRCUIT.labels(provider).set(seen.get(provider, 0))
        for code in withdrawal_metrics.ANSWER_CLASSES:  # the webhook objective's series, at 0
            withdrawal_metrics.WEBHOOK_ANSWERS.labels(provider, code)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
