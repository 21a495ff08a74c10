-- 0017: history at volume (issue 23; bench/volume.py, docs/capacity.md). What five million
-- withdrawals of history showed: retention's locks reached the hot tables, and a few of
-- the runbook's queries and the sweep read whole tables.
--
-- 1. The audit trail's foreign keys to order_queues and order_tasks go. Detaching a
--    partition that has them takes SHARE ROW EXCLUSIVE on both tables (PostgreSQL
--    gives the detached table constraints of its own) and dropping it ACCESS EXCLUSIVE
--    (their triggers go): every transition, and every read of a withdrawal, queued
--    behind the archiver, and a transition that already held its queue's row while
--    the detach held the audit trail deadlocked with it. The references they checked
--    are kept by the writer itself: the journal writes each audit row in the
--    transition's transaction, for the queue and task rows that transaction holds
--    locked, and queue and task rows are never deleted. Each audit row also stops
--    paying two key-share lookups. The locks are taken first, in a transition's order
--    (as 0015's), so this queues behind transitions in flight rather than deadlocking.
LOCK TABLE order_queues, order_tasks, order_task_events IN ACCESS EXCLUSIVE MODE;
ALTER TABLE order_task_events DROP CONSTRAINT IF EXISTS order_task_events_queue_id_fkey;
ALTER TABLE order_task_events DROP CONSTRAINT IF EXISTS order_task_events_task_id_fkey;

-- 2. Indexes for what read whole tables (each small: a partial index holds live rows
--    or rare ones). On a big installation build them by hand first, CONCURRENTLY
--    (docs/upgrades.md), and this migration finds them and does nothing.
-- The sweep's scan (engine/sweep.py): exactly its predicate, from the definitions'
-- live statuses and the storage's swept_also/swept_never (tests/test_status_sets.py).
CREATE INDEX IF NOT EXISTS order_tasks_swept ON order_tasks (updated_at)
    WHERE (status IN ('CREATING', 'EXECUTING', 'MANUAL_CHECK', 'NEGATIVE_EVAL', 'RECHECKING')
           OR (status = 'PENDING' AND target IS NOT NULL))
      AND NOT (status = 'MANUAL_CHECK' AND target IS NULL);
-- "A provider is down": a provider's tasks not yet final, by status.
CREATE INDEX IF NOT EXISTS order_tasks_unfinished ON order_tasks (provider)
    WHERE status NOT IN ('CANCELLED', 'FAILED', 'SKIPPED', 'SUCCEEDED');
-- "A provider is down": a provider's finished attempts of the last hours
-- (provider_success_hourly below).
CREATE INDEX IF NOT EXISTS order_tasks_finished ON order_tasks (provider, updated_at)
    WHERE status IN ('FAILED', 'SKIPPED', 'SUCCEEDED');
-- Webhooks refused (wrong_provider, provider_conflict, ...): the rare ones, newest first.
CREATE INDEX IF NOT EXISTS webhook_inbox_refused ON webhook_inbox (outcome, id)
    WHERE outcome NOT IN ('applied', 'ignored');
-- What people did at break-glass (PaymentBreakGlassSignIn's runbook).
CREATE INDEX IF NOT EXISTS order_task_events_break_glass ON order_task_events (id)
    WHERE actor LIKE '%at break-glass)';
-- A hold the service does not know, by the ledger's order id (v_ledger_drift).
CREATE INDEX IF NOT EXISTS ledger_holds_order ON ledger_holds (order_id);

-- 3. v_ledger_drift as two arms, so that `WHERE order_id = 'X'` reaches an index in
--    each (a FULL JOIN's coalesce of both sides' order ids reaches none): our tasks with
--    their holds, and the holds with no task. A hold's key is its task's id as text;
--    only a key in that exact form can be one (the guarded cast never fails).
CREATE OR REPLACE VIEW v_ledger_drift AS
SELECT o.id::text AS key, q.order_id, o.queue_id, o.status::text AS task_status,
       o.funds::text AS funds, l.status AS ledger_status,
       'funds ' || o.funds::text || ' but ledger ' || coalesce(l.status, 'has no hold')
           AS drift,
       CASE WHEN l.key IS NULL THEN 'missing_hold' ELSE 'status_mismatch' END AS kind,
       -- a task that moved after a reconciliation run began is not judged by it (0010)
       o.updated_at AS task_updated_at
FROM order_tasks o
JOIN order_queues q ON q.id = o.queue_id
LEFT JOIN ledger_holds l ON l.key = o.id::text
-- a task whose ledger call is in flight (activity_token set) may legitimately differ
-- for a moment: skipped, never called unknown. No hold reads as 'void' (the view
-- before let NULL make the whole test unknown: a task FROZEN or COMMITTED whose hold
-- the ledger lacks was never shown).
WHERE o.activity_token IS NULL AND NOT (
        (o.funds = 'NONE' AND coalesce(l.status, 'void') = 'void')
     OR (o.funds = 'FROZEN' AND coalesce(l.status, 'void') = 'frozen')
     OR (o.funds = 'COMMITTED' AND coalesce(l.status, 'void') = 'committed')
     OR (o.funds = 'RELEASED' AND coalesce(l.status, 'void') IN ('released', 'void')))
UNION ALL
SELECT l.key, l.order_id, NULL::uuid, NULL::text, NULL::text, l.status,
       'hold unknown to payment-service', 'unknown_hold', NULL::timestamptz
FROM ledger_holds l
WHERE l.status <> 'void' AND NOT EXISTS (
    SELECT 1 FROM order_tasks t
    WHERE t.id = CASE WHEN l.key ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                      THEN l.key::uuid END);

-- 4. A provider's finished attempts per hour over the last `hours` (24 by default): what
--    v_provider_success_hourly says, for a window an index reaches (the view reads every
--    finished task there ever was). Inlined by the planner: the arguments are constants
--    to it.
CREATE OR REPLACE FUNCTION provider_success_hourly(provider text, hours integer DEFAULT 24)
RETURNS TABLE (hour timestamptz, attempts bigint, succeeded bigint, failed bigint,
               skipped bigint, success_rate numeric)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc('hour', t.updated_at) AS hour, count(*),
           count(*) FILTER (WHERE t.status = 'SUCCEEDED'),
           count(*) FILTER (WHERE t.status = 'FAILED'),
           count(*) FILTER (WHERE t.status = 'SKIPPED'),
           round(count(*) FILTER (WHERE t.status = 'SUCCEEDED')::numeric / count(*), 4)
    FROM order_tasks t
    WHERE t.provider = provider_success_hourly.provider
      AND t.status IN ('FAILED', 'SKIPPED', 'SUCCEEDED')
      AND t.updated_at > date_trunc('hour', now()) - make_interval(hours => hours - 1)
    GROUP BY 1 ORDER BY 1 DESC
$$;
