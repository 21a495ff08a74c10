-- 0005: keys that survive a failover that lost commits (docs/ha.md).
--
-- An event's Nats-Msg-Id was its outbox id, a sequence value. A failover to a
-- standby that had not received the last commits rewinds that sequence, and
-- JetStream then drops the new events that reuse an id it has already seen as
-- duplicates. Each event now carries a random id, stored in its row before it is
-- sent, and never reused. The column is added without a default first (no table
-- rewrite), then given one; rows still waiting to be published get theirs here,
-- so the relay never falls back to the sequence.
ALTER TABLE outbox ADD COLUMN event_id uuid;
ALTER TABLE outbox ALTER COLUMN event_id SET DEFAULT gen_random_uuid();
UPDATE outbox SET event_id = gen_random_uuid() WHERE event_id IS NULL AND published_at IS NULL;

-- The ledger's hold carries cascade-core's order id, so that reconciliation can
-- name the withdrawal behind a hold the service does not know (a lost commit).
ALTER TABLE ledger_holds ADD COLUMN order_id text;

CREATE OR REPLACE VIEW v_ledger_drift AS
WITH ours AS (
    -- every task: one whose ledger call is in flight (activity_token set) may
    -- legitimately differ for a moment, so it is skipped below, never called unknown
    SELECT t.id::text AS key, q.order_id, t.queue_id, t.status::text AS task_status,
           t.funds::text AS funds, t.activity_token IS NOT NULL AS in_flight
    FROM order_tasks t JOIN order_queues q ON q.id = t.queue_id
)
SELECT coalesce(o.key, l.key) AS key, coalesce(o.order_id, l.order_id) AS order_id,
       o.queue_id, o.task_status, o.funds,
       l.status AS ledger_status,
       CASE WHEN o.key IS NULL THEN 'hold unknown to payment-service'
            ELSE 'funds ' || o.funds || ' but ledger ' || coalesce(l.status, 'has no hold') END
           AS drift
FROM ours o FULL JOIN ledger_holds l ON l.key = o.key
WHERE (o.key IS NULL AND l.status <> 'void')
   OR (o.key IS NOT NULL AND NOT o.in_flight AND NOT (
        (o.funds = 'NONE' AND coalesce(l.status, 'void') = 'void')
     OR (o.funds = 'FROZEN' AND l.status = 'frozen')
     OR (o.funds = 'COMMITTED' AND l.status = 'committed')
     OR (o.funds = 'RELEASED' AND l.status IN ('released', 'void'))));
