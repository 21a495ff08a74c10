-- 0007: API keys for cascade-core's API, and limits on the inbound API (issue 21;
-- service/api_keys.py, docs/ops.md "API keys").

-- A key is `psk_<prefix>_<secret>`, shown once. Only the SHA-256 of the whole key is
-- kept: the secret is 256 random bits, so a digest cannot be reversed or guessed
-- and needs no slow KDF. `merchants` NULL: every merchant. The limits are NULL for
-- the settings' defaults. `tokens`/`refilled_at` are the rate's token bucket and
-- `leases` the requests in flight (each until its lease ends, so a process that
-- dies mid-request gives its slots back): every request updates them.
CREATE TABLE api_keys (
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
CREATE TABLE api_key_events (
    id          bigserial PRIMARY KEY,
    key_id      uuid NOT NULL REFERENCES api_keys (id),
    action      text NOT NULL CHECK (action IN ('created', 'rotated', 'revoked')),
    actor       text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX api_key_events_key ON api_key_events (key_id, id);

CREATE OR REPLACE FUNCTION api_key_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'api_key_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER api_key_events_no_change BEFORE UPDATE OR DELETE ON api_key_events
    FOR EACH ROW EXECUTE FUNCTION api_key_events_append_only();
CREATE TRIGGER api_key_events_no_truncate BEFORE TRUNCATE ON api_key_events
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_events_append_only();

-- Each provider's webhook ingest token bucket, shared by every API process.
CREATE TABLE webhook_limits (
    provider    text PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL
);
