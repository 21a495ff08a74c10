-- 0009: live configuration (issue 22; service/live_config.py, docs/ops.md "Live
-- configuration"). The rollout gate and the provider settings are JSON documents,
-- one row per version: the row with the highest version is the one in force. A
-- change is an INSERT of the next version, never an UPDATE, so the table is its own
-- history: who, when, why, and the whole document (old = the version before).
-- `scope`: one deployment's configuration (CONFIG_SCOPE, "default"); test stacks
-- sharing a database each keep their own.
-- Provider documents hold credentials: the ops API, the console and the command line
-- show fingerprints of them, never the values (service/config_views.py).
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

-- What a withdrawal started with, kept to the end: the cohort the gate put it in
-- (before any moving back), and the versions of the two documents it was decided
-- with. NULL on withdrawals from before this migration: they use the current ones.
ALTER TABLE order_queues ADD COLUMN IF NOT EXISTS cohort text;
ALTER TABLE order_queues ADD COLUMN IF NOT EXISTS rollout_version integer;
ALTER TABLE order_queues ADD COLUMN IF NOT EXISTS providers_version integer;
ALTER TABLE order_tasks ADD COLUMN IF NOT EXISTS providers_version integer;
