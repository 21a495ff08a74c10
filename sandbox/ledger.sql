-- Sandbox ledger schema. Idempotent: applied at every startup.
CREATE SCHEMA IF NOT EXISTS sandbox_ledger;

CREATE TABLE IF NOT EXISTS sandbox_ledger.balances (
    provider       text   NOT NULL,
    currency       text   NOT NULL,
    available_minor bigint NOT NULL DEFAULT 0 CHECK (available_minor >= 0),
    frozen_minor    bigint NOT NULL DEFAULT 0 CHECK (frozen_minor >= 0),
    debited_minor   bigint NOT NULL DEFAULT 0 CHECK (debited_minor >= 0),
    PRIMARY KEY (provider, currency)
);

-- A void tombstone (rollback of an unknown key) has provider, currency,
-- amount_minor and request_hash all NULL and status 'released'.
CREATE TABLE IF NOT EXISTS sandbox_ledger.holds (
    key          text        PRIMARY KEY,
    provider     text,
    currency     text,
    amount_minor bigint      CHECK (amount_minor > 0),
    status       text        NOT NULL CHECK (status IN ('frozen', 'committed', 'released')),
    request_hash text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- cascade-core's order id, as the freeze sent it (optional, so NULL for a client
-- that sends none, and for a tombstone). Added, never part of CREATE TABLE, so a
-- ledger database from before it gets it at the next start like a new one does.
ALTER TABLE sandbox_ledger.holds ADD COLUMN IF NOT EXISTS order_id text;

-- The paged listing walks the keys in byte order, whatever the database's collation.
CREATE INDEX IF NOT EXISTS holds_key_bytes ON sandbox_ledger.holds (key COLLATE "C");

CREATE TABLE IF NOT EXISTS sandbox_ledger.ops (
    id  bigserial   PRIMARY KEY,
    key text        NOT NULL,
    op  text        NOT NULL CHECK (op IN ('freeze', 'commit', 'rollback', 'void')),
    at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
