-- 0015: the third step (docs/upgrades.md, "The partitioned audit trail"): order_task_events
-- becomes a table partitioned by month of its withdrawal's submission, and the table it
-- was, renamed, its first partition. Catalog work only, milliseconds: the key's index
-- and the check that proves every row belongs in the first partition were made by
-- 0013 and 0014, so nothing is read or built here. The locks are taken first, in the
-- order a transition takes them (attaching the foreign keys takes order_queues' and
-- order_tasks' too), so the migration queues behind transitions in flight (at most
-- lock_timeout) rather than deadlocking with one.
LOCK TABLE order_queues, order_tasks, order_task_events IN ACCESS EXCLUSIVE MODE;

ALTER TABLE order_task_events RENAME TO order_task_events_legacy;
ALTER TABLE order_task_events_legacy DROP CONSTRAINT order_task_events_pkey;
ALTER TABLE order_task_events_legacy ADD CONSTRAINT order_task_events_legacy_pkey
    PRIMARY KEY USING INDEX order_task_events_legacy_pkey;
-- The names a partition's indexes get from its parent's (as a new partition's would).
ALTER INDEX order_task_events_queue RENAME TO order_task_events_legacy_queue_id_id_idx;
ALTER INDEX order_task_events_task RENAME TO order_task_events_legacy_task_id_id_idx;
ALTER INDEX order_task_events_manual RENAME TO order_task_events_legacy_queue_id_idx;
-- The parent's own, cloned onto every partition, replaces it.
DROP TRIGGER order_task_events_no_change ON order_task_events_legacy;

-- UTC month `plus` months after the one `at` falls in: partition bounds.
CREATE OR REPLACE FUNCTION order_task_events_month(at timestamptz, plus integer)
RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT (date_trunc('month', at AT TIME ZONE 'UTC') + make_interval(months => plus))
        AT TIME ZONE 'UTC'
$$;

-- The append-only audit trail, partitioned by month of its withdrawal's submission
-- (queue_created_at: order_queues.created_at, written with each row), so that a
-- withdrawal's whole history is in one partition. task_id is NULL for queue-level events.
-- 'infinity': a row whose writer did not key it (order_task_events_keyed below).
-- The NOT NULL constraints are named as a new table's would be: PostgreSQL 18 names
-- them, the renamed table holds these names, and this one would get others.
CREATE TABLE order_task_events (
    id          bigint CONSTRAINT order_task_events_id_not_null NOT NULL
                DEFAULT nextval('order_task_events_id_seq'),
    queue_id    uuid CONSTRAINT order_task_events_queue_id_not_null NOT NULL,
    task_id     uuid,
    from_state  text,
    to_state    text,
    event_type  text CONSTRAINT order_task_events_event_type_not_null NOT NULL,
    payload     jsonb CONSTRAINT order_task_events_payload_not_null NOT NULL DEFAULT '{}',
    actor       text CONSTRAINT order_task_events_actor_not_null NOT NULL,
    trace_id    text,
    occurred_at timestamptz CONSTRAINT order_task_events_occurred_at_not_null NOT NULL
                DEFAULT clock_timestamp(),
    queue_created_at timestamptz CONSTRAINT order_task_events_queue_created_at_not_null NOT NULL
                DEFAULT 'infinity',
    CONSTRAINT order_task_events_pkey PRIMARY KEY (id, queue_created_at),
    CONSTRAINT order_task_events_queue_id_fkey FOREIGN KEY (queue_id)
        REFERENCES order_queues (id),
    CONSTRAINT order_task_events_task_id_fkey FOREIGN KEY (task_id) REFERENCES order_tasks (id)
) PARTITION BY RANGE (queue_created_at);
ALTER SEQUENCE order_task_events_id_seq OWNED BY order_task_events.id;
CREATE INDEX order_task_events_queue ON order_task_events (queue_id, id);
CREATE INDEX order_task_events_task ON order_task_events (task_id, id);
CREATE INDEX order_task_events_manual ON order_task_events (queue_id)
    WHERE to_state = 'MANUAL_CHECK';
-- Row triggers are cloned onto every partition, present and future, so UPDATE and DELETE
-- are refused however a partition is named. A TRUNCATE trigger is the table's own: each
-- partition gets one when it is made.
CREATE TRIGGER order_task_events_no_change BEFORE UPDATE OR DELETE ON order_task_events
    FOR EACH ROW EXECUTE FUNCTION order_task_events_append_only();
CREATE TRIGGER order_task_events_no_truncate BEFORE TRUNCATE ON order_task_events
    FOR EACH STATEMENT EXECUTE FUNCTION order_task_events_append_only();

-- The first partition: everything before partitioning ('-infinity') and the withdrawals
-- submitted up to the end of this month. Its valid check (0014) spares the scan.
DO $$ BEGIN
    EXECUTE format('ALTER TABLE order_task_events ATTACH PARTITION order_task_events_legacy'
        ' FOR VALUES FROM (MINVALUE) TO (%L)', order_task_events_month(now(), 1));
END $$;
ALTER TABLE order_task_events_legacy DROP CONSTRAINT order_task_events_before_partitioning;
ALTER TABLE order_task_events_legacy ALTER COLUMN queue_created_at SET DEFAULT 'infinity';

-- So that an insert never fails: a month with no partition (late events of a withdrawal
-- whose month was archived; partitions not made in time) lands here.
CREATE TABLE order_task_events_default PARTITION OF order_task_events DEFAULT;
CREATE TRIGGER order_task_events_no_truncate BEFORE TRUNCATE ON order_task_events_default
    FOR EACH STATEMENT EXECUTE FUNCTION order_task_events_append_only();

-- A row its writer did not key (a process of the release before this one, during the
-- rolling deploy) is routed here; it is keyed from its withdrawal and inserted again, so
-- it lies with the rest of that withdrawal's history. Rows keyed by their writer are
-- left alone. Only this partition has the trigger: keyed rows never pay for it.
CREATE OR REPLACE FUNCTION order_task_events_keyed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    submitted timestamptz;
BEGIN
    IF NEW.queue_created_at <> 'infinity' THEN
        RETURN NEW;
    END IF;
    SELECT created_at INTO submitted FROM order_queues WHERE id = NEW.queue_id;
    IF submitted IS NULL THEN
        RETURN NEW;  -- no such withdrawal: the foreign key refuses the row
    END IF;
    NEW.queue_created_at := submitted;
    INSERT INTO order_task_events SELECT NEW.*;
    RETURN NULL;
END $$;
CREATE TRIGGER order_task_events_keyed BEFORE INSERT ON order_task_events_default
    FOR EACH ROW EXECUTE FUNCTION order_task_events_keyed();

-- The audit trail's partitions and their ranges (lower NULL: from the start of time).
CREATE OR REPLACE VIEW v_event_partitions AS
SELECT c.relname::text AS name, b.bound = 'DEFAULT' AS is_default,
       nullif(btrim(m.parts[1], ''''), 'MINVALUE')::timestamptz AS lower,
       btrim(m.parts[2], '''')::timestamptz AS upper,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) AS b(bound)
LEFT JOIN LATERAL regexp_match(b.bound, 'FROM \((.*)\) TO \((.*)\)') AS m(parts) ON true
WHERE i.inhparent = 'order_task_events'::regclass;

-- Month partitions from the end of the last one to `ahead` months after this one; the
-- names of those it made. The periodic checks call it (service/history.py). Each new
-- partition gets the parent's indexes, foreign keys and row triggers, and here its
-- TRUNCATE trigger.
CREATE OR REPLACE FUNCTION order_task_events_add_months(ahead integer) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    start timestamptz;
    stop timestamptz := order_task_events_month(now(), ahead + 1);
    name text;
BEGIN
    SELECT max(upper) INTO start FROM v_event_partitions;
    start := coalesce(start, order_task_events_month(now(), 0));
    WHILE start < stop LOOP
        name := 'order_task_events_' || to_char(start AT TIME ZONE 'UTC', 'YYYY_MM');
        EXECUTE format('CREATE TABLE %I PARTITION OF order_task_events'
            ' FOR VALUES FROM (%L) TO (%L)', name, start, order_task_events_month(start, 1));
        EXECUTE format('CREATE TRIGGER order_task_events_no_truncate BEFORE TRUNCATE ON %I'
            ' FOR EACH STATEMENT EXECUTE FUNCTION order_task_events_append_only()', name);
        RETURN NEXT name;
        start := order_task_events_month(start, 1);
    END LOOP;
END $$;
SELECT order_task_events_add_months(3);

-- The timeline view follows the table's name to the partitioned table.
CREATE OR REPLACE VIEW v_withdrawal_timeline AS
SELECT e.id AS event_id, q.order_id, q.id AS queue_id, e.task_id, t.provider, t.position,
       e.from_state, e.to_state, e.event_type, e.actor, e.payload, e.trace_id, e.occurred_at
FROM order_task_events e
JOIN order_queues q ON q.id = e.queue_id
LEFT JOIN order_tasks t ON t.id = e.task_id;
