-- payment-service schema: the current definition, to read. Databases are built and
-- upgraded by the numbered files in migrations/ (`make migrate`); a test checks
-- that applying them all gives exactly this (tests/test_migrations.py), so a
-- change here goes with a new migration (docs/upgrades.md).
-- Enum values match workflows/withdrawal_events.py.

DO $$ BEGIN
    CREATE TYPE task_status AS ENUM ('PENDING', 'CREATING', 'EXECUTING', 'NEGATIVE_EVAL',
        'RECHECKING', 'MANUAL_CHECK', 'SUCCEEDED', 'SKIPPED', 'FAILED', 'CANCELLED');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE queue_status AS ENUM ('ACTIVE', 'COMPLETED', 'FAILED', 'CANCELLED');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE funds_status AS ENUM ('NONE', 'FROZEN', 'COMMITTED', 'RELEASED');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

-- One row per withdrawal. order_id is cascade-core's id and the idempotency key.
CREATE TABLE IF NOT EXISTS order_queues (
    id               uuid PRIMARY KEY,
    workflow         text NOT NULL DEFAULT 'withdrawal',
    order_id         text NOT NULL UNIQUE,
    request_hash     text NOT NULL,
    merchant_id      text NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    currency         char(3) NOT NULL,
    status           queue_status NOT NULL DEFAULT 'ACTIVE',
    cancel_requested boolean NOT NULL DEFAULT false,
    -- set when someone must look (e.g. a provider contradicts a final state)
    needs_attention  boolean NOT NULL DEFAULT false,
    attention_reason text,
    core_notified_at timestamptz,  -- cascade-core acknowledged the final outcome
    -- the rollout gate's decision: 'health_cascade' (routed by provider health),
    -- 'cascade', or 'single_shot' (the old path: the first provider only);
    -- requested_cascade keeps what cascade-core sent
    policy           text NOT NULL DEFAULT 'cascade'
        CHECK (policy IN ('cascade', 'single_shot', 'health_cascade')),
    policy_reason    text,
    requested_cascade text[] NOT NULL DEFAULT '{}',
    trace_id         text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    -- the version of the workflow definition it runs on, to the end (0002;
    -- workflows/registry.py). Columns added by a migration come last here too.
    workflow_version integer NOT NULL DEFAULT 1,
    -- the W3C trace context of its submission, parent of its steps' spans (0004)
    traceparent      text,
    -- what it started with and keeps (0009; service/live_config.py): the cohort the
    -- gate put it in before any moving back, and the configuration versions
    cohort           text,
    rollout_version  integer,
    providers_version integer
);
CREATE INDEX IF NOT EXISTS order_queues_active ON order_queues (created_at) WHERE status = 'ACTIVE';
-- Final outcomes not yet told to cascade-core (the sweep's notification repair).
CREATE INDEX IF NOT EXISTS order_queues_untold ON order_queues (finished_at)
    WHERE core_notified_at IS NULL AND status <> 'ACTIVE';
-- The cohort guard's window: withdrawals by submission time (0012; service/cohort_guard.py).
CREATE INDEX IF NOT EXISTS order_queues_created ON order_queues (created_at);

-- One row per provider attempt. Columns after `version` are the machine's state.
CREATE TABLE IF NOT EXISTS order_tasks (
    id               uuid PRIMARY KEY,
    queue_id         uuid NOT NULL REFERENCES order_queues (id),
    position         integer NOT NULL CHECK (position >= 0),
    provider         text NOT NULL,
    version          integer NOT NULL DEFAULT 0,
    -- the version at which the activity the task awaits was requested; a job
    -- result carrying another token is stale (engine/engine.py)
    activity_token   integer,
    activity         text,  -- the name of that activity (the sweep re-defers a lost one)
    status           task_status NOT NULL DEFAULT 'PENDING',
    funds            funds_status NOT NULL DEFAULT 'NONE',
    target           task_status,
    provider_ref     text,
    order_submitted  boolean NOT NULL DEFAULT false,
    cancel_requested boolean NOT NULL DEFAULT false,
    sla_expired      boolean NOT NULL DEFAULT false,
    recheck_attempts integer NOT NULL DEFAULT 0,
    webhook_deadline timestamptz,
    next_check_at    timestamptz,
    status_deadline  timestamptz,
    last_reason      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    providers_version integer,  -- its withdrawal's (0009)
    UNIQUE (queue_id, position),
    -- Money invariants the database can hold on its own:
    CONSTRAINT committed_iff_succeeded CHECK ((status = 'SUCCEEDED') = (funds = 'COMMITTED')),
    CONSTRAINT no_hold_after_failure CHECK (
        status NOT IN ('SKIPPED', 'FAILED', 'CANCELLED') OR funds IN ('NONE', 'RELEASED')),
    CONSTRAINT pending_holds_nothing CHECK (status <> 'PENDING' OR funds = 'NONE')
);
-- At most one live attempt per withdrawal, one success, and one hold holding money.
CREATE UNIQUE INDEX IF NOT EXISTS order_tasks_one_live ON order_tasks (queue_id)
    WHERE status IN ('CREATING', 'EXECUTING', 'NEGATIVE_EVAL', 'RECHECKING', 'MANUAL_CHECK');
CREATE UNIQUE INDEX IF NOT EXISTS order_tasks_one_success ON order_tasks (queue_id)
    WHERE status = 'SUCCEEDED';
CREATE UNIQUE INDEX IF NOT EXISTS order_tasks_one_hold ON order_tasks (queue_id)
    WHERE funds IN ('FROZEN', 'COMMITTED');
CREATE INDEX IF NOT EXISTS order_tasks_open ON order_tasks (status)
    WHERE status NOT IN ('PENDING', 'SUCCEEDED', 'SKIPPED', 'FAILED', 'CANCELLED');
-- The concurrency limit's count: tasks that may have an order open at a provider.
CREATE INDEX IF NOT EXISTS order_tasks_in_flight ON order_tasks (provider)
    WHERE status IN ('CREATING', 'EXECUTING', 'NEGATIVE_EVAL', 'RECHECKING');
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
-- (provider_success_hourly).
CREATE INDEX IF NOT EXISTS order_tasks_finished ON order_tasks (provider, updated_at)
    WHERE status IN ('FAILED', 'SKIPPED', 'SUCCEEDED');

-- The append-only audit trail, partitioned by month of its withdrawal's submission
-- (queue_created_at: order_queues.created_at, written with each row; 0013-0015), so that
-- a withdrawal's whole history is in one partition and leaves the hot tables with it
-- (service/archive.py, docs/ops.md "Retention and the archive"). task_id is NULL for
-- queue-level events. 'infinity': a row whose writer did not key it
-- (order_task_events_keyed below).
CREATE OR REPLACE FUNCTION order_task_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'order_task_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

-- UTC month `plus` months after the one `at` falls in: partition bounds.
CREATE OR REPLACE FUNCTION order_task_events_month(at timestamptz, plus integer)
RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT (date_trunc('month', at AT TIME ZONE 'UTC') + make_interval(months => plus))
        AT TIME ZONE 'UTC'
$$;

CREATE TABLE IF NOT EXISTS order_task_events (
    id          bigserial,
    queue_id    uuid NOT NULL,
    task_id     uuid,
    from_state  text,
    to_state    text,
    event_type  text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    actor       text NOT NULL,
    trace_id    text,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    queue_created_at timestamptz NOT NULL DEFAULT 'infinity',
    -- No foreign keys (0017): the journal writes each row in its transition's
    -- transaction, for the queue and task rows it holds locked, and those are never
    -- deleted; keys would tie retention's detach and drop to locks on both tables.
    CONSTRAINT order_task_events_pkey PRIMARY KEY (id, queue_created_at)
) PARTITION BY RANGE (queue_created_at);
CREATE INDEX IF NOT EXISTS order_task_events_queue ON order_task_events (queue_id, id);
CREATE INDEX IF NOT EXISTS order_task_events_task ON order_task_events (task_id, id);
-- A withdrawal's entries into a manual check, for the cohort guard (0012).
CREATE INDEX IF NOT EXISTS order_task_events_manual ON order_task_events (queue_id)
    WHERE to_state = 'MANUAL_CHECK';
-- What people did at break-glass (PaymentBreakGlassSignIn's runbook; 0017).
CREATE INDEX IF NOT EXISTS order_task_events_break_glass ON order_task_events (id)
    WHERE actor LIKE '%at break-glass)';

-- Row triggers are cloned onto every partition, present and future, so UPDATE and DELETE
-- are refused however a partition is named. A TRUNCATE trigger is the table's own: each
-- partition gets one when it is made. Retention detaches whole partitions (never a row).
DROP TRIGGER IF EXISTS order_task_events_no_change ON order_task_events;
CREATE TRIGGER order_task_events_no_change BEFORE UPDATE OR DELETE ON order_task_events
    FOR EACH ROW EXECUTE FUNCTION order_task_events_append_only();
DROP TRIGGER IF EXISTS order_task_events_no_truncate ON order_task_events;
CREATE TRIGGER order_task_events_no_truncate BEFORE TRUNCATE ON order_task_events
    FOR EACH STATEMENT EXECUTE FUNCTION order_task_events_append_only();

-- The first partition: on an installation that had the table before 0015, that table
-- (every row of it '-infinity'); either way, the withdrawals submitted up to the end of
-- the month partitioning began in.
DO $$ BEGIN
    EXECUTE format('CREATE TABLE IF NOT EXISTS order_task_events_legacy PARTITION OF'
        ' order_task_events FOR VALUES FROM (MINVALUE) TO (%L)', order_task_events_month(now(), 1));
END $$;
DROP TRIGGER IF EXISTS order_task_events_no_truncate ON order_task_events_legacy;
CREATE TRIGGER order_task_events_no_truncate BEFORE TRUNCATE ON order_task_events_legacy
    FOR EACH STATEMENT EXECUTE FUNCTION order_task_events_append_only();

-- So that an insert never fails: a month with no partition (late events of a withdrawal
-- whose month was archived; partitions not made in time) lands here.
CREATE TABLE IF NOT EXISTS order_task_events_default PARTITION OF order_task_events DEFAULT;
DROP TRIGGER IF EXISTS order_task_events_no_truncate ON order_task_events_default;
CREATE TRIGGER order_task_events_no_truncate BEFORE TRUNCATE ON order_task_events_default
    FOR EACH STATEMENT EXECUTE FUNCTION order_task_events_append_only();

-- A row its writer did not key (a process of the release before 0015, during the rolling
-- deploy) is routed to the default partition; it is keyed from its withdrawal and
-- inserted again, so it lies with the rest of that withdrawal's history. Rows keyed by
-- their writer are left alone. Only that partition has the trigger.
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
DROP TRIGGER IF EXISTS order_task_events_keyed ON order_task_events_default;
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
-- names of those it made. The workers' periodic checks call it (service/history.py).
-- Each new partition gets the parent's indexes, foreign keys and row triggers, and here
-- its TRUNCATE trigger.
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

-- The archive's catalog (0016; service/archive.py, docs/ops.md "Retention and the
-- archive"): one row per partition of the audit trail that left the hot tables.
-- 'detached': no longer attached (its table is still there, its archive may be missing
-- or partial: the next run writes it); 'archived': its files written, read back against
-- their checksums, and the table dropped. `manifest_sha256` ties the row to the
-- manifest, and the manifest to each file.
CREATE TABLE IF NOT EXISTS event_archives (
    partition       text PRIMARY KEY,
    lower           timestamptz,  -- NULL: from the start of time
    upper           timestamptz NOT NULL,
    state           text NOT NULL DEFAULT 'detached' CHECK (state IN ('detached', 'archived')),
    path            text,
    events          bigint,
    withdrawals     bigint,
    manifest_sha256 text,
    detached_at     timestamptz NOT NULL DEFAULT now(),
    archived_at     timestamptz
);

-- Transactional outbox, relayed to NATS JetStream. event_id is the Nats-Msg-Id:
-- random and stored with the row, never the id sequence, which a failover that
-- lost commits can rewind (0005, docs/ha.md).
CREATE TABLE IF NOT EXISTS outbox (
    id           bigserial PRIMARY KEY,
    subject      text NOT NULL,
    queue_id     uuid,
    task_id      uuid,
    payload      jsonb NOT NULL,
    trace_id     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    event_id     uuid DEFAULT gen_random_uuid()
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
-- Wakes the relay (activities/outbox_relay.py) when a transaction that wrote
-- events commits; one notification per transaction, however many rows. Only when
-- the relay sleeps: awake, it polls and holds advisory lock 7303024 exclusively
-- (a NOTIFY costs a transaction in every LISTENing backend; migration 0019).
CREATE OR REPLACE FUNCTION outbox_wake_relay() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock_shared(7303024) THEN
        PERFORM pg_notify('payment_outbox', '');
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS outbox_wake_relay ON outbox;
CREATE TRIGGER outbox_wake_relay AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_wake_relay();

-- Verified provider webhooks; (provider, webhook_id) deduplicates deliveries.
CREATE TABLE IF NOT EXISTS webhook_inbox (
    id           bigserial PRIMARY KEY,
    provider     text NOT NULL,
    webhook_id   text NOT NULL,
    reference    text,
    body         jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    outcome      text,
    UNIQUE (provider, webhook_id)
);
-- Webhooks refused (wrong_provider, provider_conflict, ...): the rare ones, newest first.
CREATE INDEX IF NOT EXISTS webhook_inbox_refused ON webhook_inbox (outcome, id)
    WHERE outcome NOT IN ('applied', 'ignored');

-- Durable timers. Kept out of procrastinate_jobs on purpose: its fetch query
-- scans every not-yet-due job, so 15-minute timers parked there would slow
-- every worker's pickup. Here they wait on a due_at index; the timer pump
-- moves only due rows (SKIP LOCKED, a bounded batch) into procrastinate.
CREATE TABLE IF NOT EXISTS timers (
    id         bigserial PRIMARY KEY,
    task_id    uuid NOT NULL REFERENCES order_tasks (id),
    kind       text NOT NULL,
    due_at     timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS timers_due ON timers (due_at);

-- Jobs that exhausted their attempts (or failed for good). The task's money
-- stays where it is until the job is replayed after a fix.
CREATE TABLE IF NOT EXISTS dead_letters (
    id            bigserial PRIMARY KEY,
    job_id        bigint NOT NULL UNIQUE,
    task_name     text NOT NULL,
    args          jsonb NOT NULL,
    task_id       uuid,
    queue_id      uuid,
    attempts      integer NOT NULL,
    error         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    replayed_at   timestamptz,
    replayed_by   text,
    replay_job_id bigint
);
CREATE INDEX IF NOT EXISTS dead_letters_open ON dead_letters (created_at) WHERE replayed_at IS NULL;

-- ---------------------------------------------------------------------------
-- Ops forensics: views to query by hand (docs/ops.md has the runbook).
-- ---------------------------------------------------------------------------

-- Every event of every withdrawal, with its ids; ORDER BY event_id for a timeline.
CREATE OR REPLACE VIEW v_withdrawal_timeline AS
SELECT e.id AS event_id, q.order_id, q.id AS queue_id, e.task_id, t.provider, t.position,
       e.from_state, e.to_state, e.event_type, e.actor, e.payload, e.trace_id, e.occurred_at
FROM order_task_events e
JOIN order_queues q ON q.id = e.queue_id
LEFT JOIN order_tasks t ON t.id = e.task_id;

-- Open tasks past the point where a timer or job should have moved them.
CREATE OR REPLACE FUNCTION stuck_tasks(grace interval DEFAULT interval '1 minute')
RETURNS TABLE (order_id text, queue_id uuid, task_id uuid, provider text, status text,
               target text, reason text, overdue_since timestamptz, updated_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT q.order_id, q.id, t.id, t.provider, t.status::text, t.target::text, s.reason,
           s.since, t.updated_at
    FROM order_tasks t
    JOIN order_queues q ON q.id = t.queue_id
    CROSS JOIN LATERAL (VALUES
        ('settling: ledger call not finished', CASE WHEN t.target IS NOT NULL THEN t.updated_at END),
        ('webhook SLA passed', CASE WHEN t.status = 'EXECUTING' AND NOT t.sla_expired
                                    THEN t.webhook_deadline END),
        ('status timeout passed', CASE WHEN t.status = 'EXECUTING' THEN t.status_deadline END),
        ('recheck or poll overdue', t.next_check_at),
        ('no progress while creating', CASE WHEN t.status IN ('CREATING', 'NEGATIVE_EVAL')
                                            THEN t.updated_at END)
    ) AS s(reason, since)
    WHERE t.status IN ('CREATING', 'EXECUTING', 'NEGATIVE_EVAL', 'RECHECKING')
      AND s.since IS NOT NULL AND s.since < now() - grace
$$;
CREATE OR REPLACE VIEW v_stuck_tasks AS SELECT * FROM stuck_tasks();

-- Tasks waiting for a person, oldest first.
CREATE OR REPLACE VIEW v_manual_check_queue AS
SELECT q.order_id, q.id AS queue_id, t.id AS task_id, t.provider, t.provider_ref,
       q.amount_minor, q.currency, t.last_reason, t.updated_at AS waiting_since,
       now() - t.updated_at AS waiting_for
FROM order_tasks t JOIN order_queues q ON q.id = t.queue_id
WHERE t.status = 'MANUAL_CHECK' AND t.target IS NULL;

-- Finished attempts per provider and hour: how each provider is doing.
CREATE OR REPLACE VIEW v_provider_success_hourly AS
SELECT t.provider, date_trunc('hour', t.updated_at) AS hour,
       count(*) AS attempts,
       count(*) FILTER (WHERE t.status = 'SUCCEEDED') AS succeeded,
       count(*) FILTER (WHERE t.status = 'FAILED') AS failed,
       count(*) FILTER (WHERE t.status = 'SKIPPED') AS skipped,
       round(count(*) FILTER (WHERE t.status = 'SUCCEEDED')::numeric / count(*), 4) AS success_rate
FROM order_tasks t
WHERE t.status IN ('SUCCEEDED', 'FAILED', 'SKIPPED')
GROUP BY 1, 2;

-- A provider's finished attempts per hour over the last `hours` (24 by default): what
-- v_provider_success_hourly says, for a window an index reaches (the view reads every
-- finished task there ever was). Inlined by the planner: the arguments are constants
-- to it.
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

-- Dead letters not yet replayed, with the withdrawal they belong to.
CREATE OR REPLACE VIEW v_dead_letters AS
SELECT d.id AS dead_letter_id, q.order_id, d.queue_id, d.task_id, t.status::text AS task_status,
       t.funds::text AS funds, d.task_name, d.args, d.attempts, d.error, d.created_at
FROM dead_letters d
LEFT JOIN order_tasks t ON t.id = d.task_id
LEFT JOIN order_queues q ON q.id = d.queue_id
WHERE d.replayed_at IS NULL;

-- The ledger's view of each hold, as last fetched by `python -m service.ops reconcile`.
CREATE TABLE IF NOT EXISTS ledger_holds (
    key          text PRIMARY KEY,
    provider     text,
    currency     text,
    amount       text,
    status       text NOT NULL,
    fetched_at   timestamptz NOT NULL DEFAULT now(),
    order_id     text  -- cascade-core's order id, as the ledger has it (0005)
);
-- Continuous reconciliation pages the ledger's holds in byte order of key and
-- deletes the ones gone range by range (0010).
CREATE INDEX IF NOT EXISTS ledger_holds_key_bytes ON ledger_holds (key COLLATE "C");
-- A hold the service does not know, by the ledger's order id (v_ledger_drift).
CREATE INDEX IF NOT EXISTS ledger_holds_order ON ledger_holds (order_id);

-- Where our books and the ledger's disagree. A task with a ledger call in flight
-- (activity_token set) may legitimately be ahead or behind, so it is left out.
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

-- Every reconciliation run (0010): when, how many holds it read, what it left open,
-- or why it failed. `/metrics` reads the last completed and the last clean one here.
CREATE TABLE IF NOT EXISTS ledger_reconcile_runs (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    holds         bigint NOT NULL DEFAULT 0,
    open_findings integer,
    error         text
);

-- The release before migrations applied schema.sql at start-up, again whenever its
-- hash was not recorded here. 0001 records it, so a process of that release
-- restarted during a rolling deploy leaves the database alone.
CREATE TABLE IF NOT EXISTS schema_applied
    (sha256 text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());

-- ---------------------------------------------------------------------------
-- Provider health and limits, for routing (0003; docs/design.md, Routing).
-- ---------------------------------------------------------------------------

-- Outcomes of our own calls, per provider, append-only. A periodic job reads a
-- sliding window of them and moves each provider's circuit; it also deletes
-- those older than any window.
CREATE TABLE IF NOT EXISTS provider_outcomes (
    id       bigserial PRIMARY KEY,
    provider text NOT NULL,
    outcome  text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS provider_outcomes_window ON provider_outcomes (provider, at);

-- Each provider's circuit: closed (used), open (skipped until probe_at), half_open
-- (probes_left attempts may go through). `forced`: an operator's override.
CREATE TABLE IF NOT EXISTS provider_circuits (
    provider    text PRIMARY KEY,
    state       text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    since       timestamptz NOT NULL DEFAULT now(),
    probe_at    timestamptz,
    probes_left integer NOT NULL DEFAULT 0,
    forced      text CHECK (forced IN ('open', 'closed')),
    reason      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every change of a circuit, by the evaluator or an operator: the audit trail.
CREATE TABLE IF NOT EXISTS provider_circuit_events (
    id          bigserial PRIMARY KEY,
    provider    text NOT NULL,
    from_state  text,
    to_state    text NOT NULL,
    reason      text NOT NULL,
    actor       text NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS provider_circuit_events_provider
    ON provider_circuit_events (provider, id);

-- A limited provider's row: locked by every start there (which serialises them
-- across workers), with its rate's token bucket.
CREATE TABLE IF NOT EXISTS provider_limits (
    provider    text PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL
);

-- ---------------------------------------------------------------------------
-- API keys for cascade-core's API, and limits on the inbound API (0007;
-- service/api_keys.py, docs/ops.md "API keys").
-- ---------------------------------------------------------------------------

-- A key is `psk_<prefix>_<secret>`, shown once. Only the SHA-256 of the whole key is
-- kept: the secret is 256 random bits, so a digest cannot be reversed or guessed
-- and needs no slow KDF. `merchants` NULL: every merchant. The limits are NULL for
-- the settings' defaults. `tokens`/`refilled_at` are the rate's token bucket and
-- `leases` the requests in flight (each until its lease ends, so a process that
-- dies mid-request gives its slots back): every request updates them.
CREATE TABLE IF NOT EXISTS api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    client        text NOT NULL,
    prefix        text NOT NULL UNIQUE,
    hash          bytea NOT NULL UNIQUE CHECK (length(hash) = 32),
    scopes        text[] NOT NULL CHECK (
        cardinality(scopes) > 0
        AND scopes <@ ARRAY['withdrawals:submit', 'withdrawals:read', 'withdrawals:cancel']),
    merchants     text[] CHECK (cardinality(merchants) > 0),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    revoked_by    text,
    rotated_from  uuid REFERENCES api_keys (id),
    rate_per_s    double precision CHECK (rate_per_s > 0),
    burst         integer CHECK (burst >= 1),
    max_in_flight integer CHECK (max_in_flight >= 1),
    tokens        double precision,
    refilled_at   timestamptz,
    leases        timestamptz[] NOT NULL DEFAULT '{}'
);

-- Who created, rotated or revoked which key, and when: append-only.
CREATE TABLE IF NOT EXISTS api_key_events (
    id          bigserial PRIMARY KEY,
    key_id      uuid NOT NULL REFERENCES api_keys (id),
    action      text NOT NULL CHECK (action IN ('created', 'rotated', 'revoked')),
    actor       text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS api_key_events_key ON api_key_events (key_id, id);

CREATE OR REPLACE FUNCTION api_key_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'api_key_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

DROP TRIGGER IF EXISTS api_key_events_no_change ON api_key_events;
CREATE TRIGGER api_key_events_no_change BEFORE UPDATE OR DELETE ON api_key_events
    FOR EACH ROW EXECUTE FUNCTION api_key_events_append_only();
DROP TRIGGER IF EXISTS api_key_events_no_truncate ON api_key_events;
CREATE TRIGGER api_key_events_no_truncate BEFORE TRUNCATE ON api_key_events
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_events_append_only();

-- Each provider's webhook ingest token bucket, shared by every API process, which
-- lease tokens from it a few at a time (`leased`: the last lease; migration 0020).
CREATE TABLE IF NOT EXISTS webhook_limits (
    provider    text PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL,
    leased      integer NOT NULL DEFAULT 1
);

-- People (migration 0006): role grants the service owns, and who signed in how.
CREATE TABLE IF NOT EXISTS role_grants (
    id         bigserial PRIMARY KEY,
    issuer     text NOT NULL,
    subject    text,
    email      text,
    role       text NOT NULL CHECK (role IN ('viewer', 'resolver', 'approver', 'admin')),
    granted_by text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(subject, email) = 1)
);
CREATE UNIQUE INDEX IF NOT EXISTS role_grants_subject
    ON role_grants (issuer, subject, role) WHERE subject IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS role_grants_email
    ON role_grants (issuer, lower(email), role) WHERE email IS NOT NULL;

-- Who signed in to the console, and every break-glass sign-in (also an outbox
-- event and the break_glass_sign_ins_total counter, which pages).
CREATE TABLE IF NOT EXISTS people_events (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    actor       text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS people_events_kind ON people_events (kind, id);

-- Four-eyes on money (migration 0008; service/approvals.py, docs/ops.md "Four-eyes
-- approvals"): a manual-check decision that needs a second person is a proposal
-- until an approver approves it. People are kept as the audit trail names them
-- (`proposed_by`, `decided_by`) and by their issuer and subject, which is what makes
-- two people two: the database itself refuses a proposal decided by its proposer.
-- `task_version`: the task as the proposer saw it; an approval of a task that has
-- moved on since is refused, and the proposal superseded.
CREATE TABLE IF NOT EXISTS manual_check_proposals (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id          uuid NOT NULL REFERENCES order_tasks (id),
    queue_id         uuid NOT NULL REFERENCES order_queues (id),
    outcome          text NOT NULL CHECK (outcome IN ('positive', 'negative')),
    reason           text NOT NULL,
    proposed_by      text NOT NULL,
    proposer_issuer  text NOT NULL,
    proposer_subject text NOT NULL,
    proposed_at      timestamptz NOT NULL DEFAULT now(),
    task_version     integer NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'rejected', 'expired', 'superseded')),
    decided_by       text,
    decider_issuer   text,
    decider_subject  text,
    decided_at       timestamptz,
    decision_reason  text,
    expires_at       timestamptz NOT NULL,
    CONSTRAINT decided_unless_pending CHECK ((status = 'pending') = (decided_at IS NULL)),
    CONSTRAINT four_eyes CHECK (
        status NOT IN ('approved', 'rejected')
        OR (num_nonnulls(decided_by, decider_issuer, decider_subject) = 3
            AND ROW(decider_issuer, decider_subject)
                IS DISTINCT FROM ROW(proposer_issuer, proposer_subject)))
);
-- One decision in flight per task; the worker's checks find the due ones.
CREATE UNIQUE INDEX IF NOT EXISTS manual_check_proposals_one_pending
    ON manual_check_proposals (task_id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS manual_check_proposals_due
    ON manual_check_proposals (expires_at) WHERE status = 'pending';

-- Each withdrawal judged once against the settle objective (0011;
-- service/settle_slo.py): on_time or late when it settles, overdue when the
-- periodic checks find it unsettled past SETTLE_SLO_S; not_judged: in flight
-- when 0011 ran.
CREATE TABLE IF NOT EXISTS settle_slo_results (
    queue_id   uuid PRIMARY KEY REFERENCES order_queues (id),
    policy     text NOT NULL,
    result     text NOT NULL CHECK (result IN ('on_time', 'late', 'overdue', 'not_judged')),
    judged_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS settle_slo_results_judged ON settle_slo_results (judged_at);

-- The settle objective's month (docs/ops.md, Service-level objectives) without
-- counting a month of judgements: closed minutes are counted once, into
-- settle_slo_minutes, by the workers' periodic checks (settle_slo_roll_up), and
-- settle_slo_summary adds the few judgements not yet rolled up. At 100
-- withdrawals/s a month is 260 million judgements; the summary reads 43,200 minutes
-- (a row each a policy and result).
CREATE TABLE IF NOT EXISTS settle_slo_minutes (
    minute     timestamptz NOT NULL,  -- judgements with judged_at in [minute, minute + 1 min)
    policy     text NOT NULL,
    result     text NOT NULL,
    judgements bigint NOT NULL CHECK (judgements > 0),
    PRIMARY KEY (minute, policy, result)
);
-- One row: every judgement with judged_at before up_to is in settle_slo_minutes, and
-- none after it. Its row lock makes one roller at a time.
CREATE TABLE IF NOT EXISTS settle_slo_rolled (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    up_to     timestamptz NOT NULL CHECK (up_to = date_trunc('minute', up_to))
);
-- The past overdue judgements of withdrawals still open (PaymentSettleSLOBurn's runbook).
CREATE INDEX IF NOT EXISTS settle_slo_results_overdue ON settle_slo_results (queue_id)
    WHERE result = 'overdue';

-- Rolls up whole minutes after up_to, at most `most` of them a call (a new
-- installation's history catches up a call at a time). A judgement's judged_at is
-- its transaction's start (now()), and it is seen only at commit; so a minute is
-- closed only once no transaction that began in it can still commit one: up to the
-- oldest open transaction's start in this database, and `lag` before now.
CREATE OR REPLACE FUNCTION settle_slo_roll_up(
    lag interval DEFAULT '1 minute', most interval DEFAULT '1 hour'
) RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    since timestamptz;
    until timestamptz;
BEGIN
    SELECT up_to INTO since FROM settle_slo_rolled FOR UPDATE;
    IF since IS NULL THEN  -- the first call: from the first judgement there is
        INSERT INTO settle_slo_rolled (up_to)
        SELECT date_trunc('minute', coalesce(min(judged_at), now() - lag))
        FROM settle_slo_results
        ON CONFLICT (singleton) DO NOTHING;
        SELECT up_to INTO since FROM settle_slo_rolled FOR UPDATE;
    END IF;
    until := date_trunc('minute', least(
        now() - lag, since + most,
        (SELECT min(xact_start) FROM pg_stat_activity
         WHERE datname = current_database() AND backend_type = 'client backend')));
    IF until <= since THEN
        RETURN since;
    END IF;
    INSERT INTO settle_slo_minutes (minute, policy, result, judgements)
    SELECT date_trunc('minute', judged_at), policy, result, count(*)
    FROM settle_slo_results WHERE judged_at >= since AND judged_at < until
    GROUP BY 1, 2, 3;
    UPDATE settle_slo_rolled SET up_to = until;
    RETURN until;
END $$;

-- Judgements with judged_at in the last `period`, by policy and result: exactly
-- `SELECT policy, result, count(*) FROM settle_slo_results WHERE judged_at > now() -
-- period GROUP BY 1, 2` (tests/test_settle_slo_rollup.py), from three parts that do
-- not overlap: the window's first, partial minute and what was never rolled up from
-- the raw rows (by the judged_at index), the whole minutes between from the roll-up.
CREATE OR REPLACE FUNCTION settle_slo_summary(period interval DEFAULT '30 days')
RETURNS TABLE (policy text, result text, judgements bigint) LANGUAGE sql STABLE AS $$
    WITH bounds AS (
        SELECT now() - period AS since,
               coalesce((SELECT up_to FROM settle_slo_rolled), '-infinity') AS up_to
    ), parts AS (
        SELECT m.policy, m.result, m.judgements FROM settle_slo_minutes m, bounds b
        WHERE m.minute > b.since AND m.minute < b.up_to
        UNION ALL
        -- two ranges of the judged_at index, each bounded on both sides
        SELECT r.policy, r.result, count(*) FROM settle_slo_results r, bounds b
        WHERE r.judged_at > b.since
          AND r.judged_at < least(date_trunc('minute', b.since) + interval '1 minute', b.up_to)
        GROUP BY 1, 2
        UNION ALL
        SELECT r.policy, r.result, count(*) FROM settle_slo_results r, bounds b
        WHERE r.judged_at > b.since AND r.judged_at >= b.up_to
        GROUP BY 1, 2
    )
    SELECT p.policy, p.result, sum(p.judgements)::bigint FROM parts p
    GROUP BY 1, 2 ORDER BY 1, 2
$$;

-- Live configuration (migration 0009; service/live_config.py, docs/ops.md "Live
-- configuration"): one row per version of the rollout and providers documents,
-- append-only, notified on insert. Provider documents hold credentials.
CREATE TABLE IF NOT EXISTS live_config (
    scope       text NOT NULL,
    name        text NOT NULL CHECK (name IN ('rollout', 'providers')),
    version     integer NOT NULL CHECK (version >= 1),
    body        jsonb NOT NULL,
    changed_by  text NOT NULL,
    reason      text NOT NULL CHECK (length(reason) > 0),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, name, version)
);

CREATE OR REPLACE FUNCTION live_config_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'live_config is append-only (% refused): a change is a new version', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

DROP TRIGGER IF EXISTS live_config_no_change ON live_config;
CREATE TRIGGER live_config_no_change BEFORE UPDATE OR DELETE ON live_config
    FOR EACH ROW EXECUTE FUNCTION live_config_append_only();

-- Every process LISTENs on `live_config` and re-reads within a second; a periodic
-- re-read covers a notification lost with a connection (service/live_config.py).
-- The trigger, not the writer, notifies: a change made by hand in psql is applied too.
CREATE OR REPLACE FUNCTION live_config_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('live_config', NEW.scope || ' ' || NEW.name || ' ' || NEW.version);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS live_config_changed ON live_config;
CREATE TRIGGER live_config_changed AFTER INSERT ON live_config
    FOR EACH ROW EXECUTE FUNCTION live_config_notify();
