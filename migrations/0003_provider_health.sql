-- 0003: provider health and limits, for routing (workflows/routing.py,
-- service/routing.py, service/health.py).

-- Outcomes of our own calls, per provider, append-only. A periodic job reads a
-- sliding window of them and moves each provider's circuit; it also deletes
-- those older than any window.
CREATE TABLE provider_outcomes (
    id       bigserial PRIMARY KEY,
    provider text NOT NULL,
    outcome  text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_outcomes_window ON provider_outcomes (provider, at);

-- Each provider's circuit: closed (used), open (skipped until probe_at), half_open
-- (probes_left attempts may go through). `forced`: an operator's override.
CREATE TABLE provider_circuits (
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
CREATE TABLE provider_circuit_events (
    id          bigserial PRIMARY KEY,
    provider    text NOT NULL,
    from_state  text,
    to_state    text NOT NULL,
    reason      text NOT NULL,
    actor       text NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX provider_circuit_events_provider ON provider_circuit_events (provider, id);

-- A limited provider's row: locked by every start there (which serialises them
-- across workers), with its rate's token bucket.
CREATE TABLE provider_limits (
    provider    text PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL
);
-- The concurrency limit's count: tasks that may have an order open at a provider.
CREATE INDEX order_tasks_in_flight ON order_tasks (provider)
    WHERE status IN ('CREATING', 'EXECUTING', 'NEGATIVE_EVAL', 'RECHECKING');

-- The rollout gate's third policy: the cascade routed by provider health.
-- NOT VALID then VALIDATE: the check is added without blocking writes on a full table.
ALTER TABLE order_queues DROP CONSTRAINT order_queues_policy_check;
ALTER TABLE order_queues ADD CONSTRAINT order_queues_policy_check
    CHECK (policy IN ('cascade', 'single_shot', 'health_cascade')) NOT VALID;
ALTER TABLE order_queues VALIDATE CONSTRAINT order_queues_policy_check;
