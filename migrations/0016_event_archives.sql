-- 0016: the archive's catalog (issue 23; service/archive.py, docs/ops.md "Retention and
-- the archive"). One row per partition of the audit trail that left the hot tables:
-- 'detached' once it is no longer attached (its table is still there, its archive may
-- be missing or partial: the next run writes it), 'archived' once its files are written,
-- read back against their checksums, and the table dropped. `manifest_sha256` ties the
-- row to the manifest, and the manifest to each file.
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
