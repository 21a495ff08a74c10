"""The SQL of a reconciliation run (service/reconciliation.py), against the tables of
migration 0010 and `v_ledger_drift`."""

from __future__ import annotations

from psycopg import sql

LOCK_WAIT = "SELECT true AS locked FROM pg_advisory_lock(%s)"
LOCK_TRY = "SELECT pg_try_advisory_lock(%s) AS locked"

START_RUN = "INSERT INTO ledger_reconcile_runs DEFAULT VALUES RETURNING id, started_at"
FINISH_RUN = (
    "UPDATE ledger_reconcile_runs SET finished_at = now(), holds = %s, open_findings = %s,"
    " error = %s WHERE id = %s"
)
# A week of runs, and always the last completed and the last clean one (/metrics).
PRUNE_RUNS = """
DELETE FROM ledger_reconcile_runs
WHERE started_at < now() - interval '7 days'
  AND id NOT IN (
    SELECT coalesce(max(id), 0) FROM ledger_reconcile_runs WHERE error IS NULL
    UNION ALL
    SELECT coalesce(max(id), 0) FROM ledger_reconcile_runs WHERE open_findings = 0)
"""
# Due: no run began within the period (a run still going on counts as begun).
DUE = """
SELECT coalesce(max(started_at), '-infinity') < now() - make_interval(secs => %s) AS due
FROM ledger_reconcile_runs
"""

# A hold's row is written only when the ledger changed it: an unchanged ledger costs
# reads, not a rewrite of the table. `fetched_at`: when the row last changed.
UPSERT_HOLDS = """
INSERT INTO ledger_holds AS l (key, provider, currency, amount, status, order_id)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
ON CONFLICT (key) DO UPDATE
SET provider = EXCLUDED.provider, currency = EXCLUDED.currency, amount = EXCLUDED.amount,
    status = EXCLUDED.status, order_id = EXCLUDED.order_id, fetched_at = now()
WHERE (l.provider, l.currency, l.amount, l.status, l.order_id)
      IS DISTINCT FROM (EXCLUDED.provider, EXCLUDED.currency, EXCLUDED.amount,
                        EXCLUDED.status, EXCLUDED.order_id)
"""


def delete_gone(has_after: bool, has_upto: bool) -> sql.Composed:
    """The holds of a page's key range (after, upto] that the page did not list.
    Only the bounds there are are written, so the range is an index scan."""
    where = [sql.SQL("key <> ALL(%(keys)s::text[])")]
    if has_after:
        where.append(sql.SQL('key COLLATE "C" > %(after)s'))
    if has_upto:
        where.append(sql.SQL('key COLLATE "C" <= %(upto)s'))
    return sql.SQL("DELETE FROM ledger_holds WHERE {}").format(sql.SQL(" AND ").join(where))


# Every disagreement of the snapshot, but those of tasks that moved after the run
# began: the run may have read their holds before they moved.
OPEN_FINDINGS = """
INSERT INTO ledger_findings AS f
    (key, kind, order_id, queue_id, task_status, funds, ledger_status, drift)
SELECT key, kind, order_id, queue_id, task_status, funds, ledger_status, drift
FROM v_ledger_drift
WHERE task_updated_at IS NULL OR task_updated_at < %(started)s
ON CONFLICT (key, kind) WHERE resolved_at IS NULL DO UPDATE
SET order_id = EXCLUDED.order_id, queue_id = EXCLUDED.queue_id,
    task_status = EXCLUDED.task_status, funds = EXCLUDED.funds,
    ledger_status = EXCLUDED.ledger_status, drift = EXCLUDED.drift, last_seen_at = now()
"""
# Open findings this run did not see again agree now, unless their task is one the
# run could not judge (it moved, or its ledger call is in flight): those stay open.
RESOLVE_FINDINGS = """
UPDATE ledger_findings f SET resolved_at = now()
WHERE f.resolved_at IS NULL AND f.last_seen_at < now()
  AND NOT EXISTS (
    SELECT 1 FROM order_tasks t
    WHERE t.id::text = f.key
      AND (t.activity_token IS NOT NULL OR t.updated_at >= %(started)s))
"""
COUNT_OPEN = "SELECT count(*) AS n FROM ledger_findings WHERE resolved_at IS NULL"
OPEN_FINDINGS_LIST = """
SELECT key, kind, order_id, queue_id, task_status, funds, ledger_status, drift,
       first_seen_at, last_seen_at
FROM ledger_findings WHERE resolved_at IS NULL ORDER BY key, kind
"""

# /metrics, from any process (service/metrics_api.py).
OPEN_BY_KIND = (
    "SELECT kind, count(*) AS n FROM ledger_findings WHERE resolved_at IS NULL GROUP BY kind"
)
LAST_RUNS = """
SELECT coalesce(extract(epoch FROM max(finished_at) FILTER (WHERE error IS NULL)), 0)
           AS last_run,
       coalesce(extract(epoch FROM max(finished_at) FILTER (WHERE open_findings = 0)), 0)
           AS last_clean
FROM ledger_reconcile_runs
"""
