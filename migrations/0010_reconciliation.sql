-- 0010: continuous reconciliation with the ledger (issue 22; service/reconciliation.py,
-- docs/ops.md "Alert: PaymentLedgerDrift"). One worker at a time pages through the
-- ledger's holds into ledger_holds, changing only the rows that changed, and keeps
-- what disagrees as findings that stay open until a later run sees them agree.

-- A page covers a range of keys in byte order (the ledger's paging order, whatever
-- the database's collation), so the holds the ledger no longer has are deleted range
-- by range; this index finds a range.
CREATE INDEX IF NOT EXISTS ledger_holds_key_bytes ON ledger_holds (key COLLATE "C");

-- The drift view gains what a run needs: the kind of each disagreement, and when the
-- task last moved (a task that moved after the run began may be ahead of the page
-- the run read, so that run does not judge it). New columns go last, so a reader of
-- the old columns sees no change.
CREATE OR REPLACE VIEW v_ledger_drift AS
WITH ours AS (
    -- every task: one whose ledger call is in flight (activity_token set) may
    -- legitimately differ for a moment, so it is skipped below, never called unknown
    SELECT t.id::text AS key, q.order_id, t.queue_id, t.status::text AS task_status,
           t.funds::text AS funds, t.activity_token IS NOT NULL AS in_flight, t.updated_at
    FROM order_tasks t JOIN order_queues q ON q.id = t.queue_id
)
SELECT coalesce(o.key, l.key) AS key, coalesce(o.order_id, l.order_id) AS order_id,
       o.queue_id, o.task_status, o.funds,
       l.status AS ledger_status,
       CASE WHEN o.key IS NULL THEN 'hold unknown to payment-service'
            ELSE 'funds ' || o.funds || ' but ledger ' || coalesce(l.status, 'has no hold') END
           AS drift,
       CASE WHEN o.key IS NULL THEN 'unknown_hold'
            WHEN l.key IS NULL THEN 'missing_hold'
            ELSE 'status_mismatch' END AS kind,
       o.updated_at AS task_updated_at
FROM ours o FULL JOIN ledger_holds l ON l.key = o.key
WHERE (o.key IS NULL AND l.status <> 'void')
   OR (o.key IS NOT NULL AND NOT o.in_flight AND NOT (
        (o.funds = 'NONE' AND coalesce(l.status, 'void') = 'void')
     OR (o.funds = 'FROZEN' AND l.status = 'frozen')
     OR (o.funds = 'COMMITTED' AND l.status = 'committed')
     OR (o.funds = 'RELEASED' AND l.status IN ('released', 'void'))));

-- Each disagreement a run saw, from the first run that saw it to the first later run
-- that saw it agree (resolved_at). `key` is the hold's (the task id); the other
-- columns are as the last run saw them.
CREATE TABLE IF NOT EXISTS ledger_findings (
    id            bigserial PRIMARY KEY,
    key           text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('unknown_hold', 'missing_hold', 'status_mismatch')),
    order_id      text,
    queue_id      uuid,
    task_status   text,
    funds         text,
    ledger_status text,
    drift         text NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz
);
-- One open finding per hold and kind: a run refreshes it rather than adding one.
CREATE UNIQUE INDEX IF NOT EXISTS ledger_findings_open
    ON ledger_findings (key, kind) WHERE resolved_at IS NULL;

-- Every run: when, how many holds it read, what it left open, or why it failed.
-- `/metrics` reads the last completed and the last clean one from here.
CREATE TABLE IF NOT EXISTS ledger_reconcile_runs (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    holds         bigint NOT NULL DEFAULT 0,
    open_findings integer,
    error         text
);
