-- 0013: the audit trail's partition key, first of three steps (issue 23; docs/upgrades.md,
-- "The partitioned audit trail"). 0015 makes order_task_events a table partitioned by
-- month of each row's withdrawal's submission (queue_created_at), so that a withdrawal's
-- whole history lies in one partition and leaves the hot tables with it (service/archive.py).
-- Catalog-only, milliseconds under its lock: a constant default is not written into the
-- existing rows (PostgreSQL 11+), and a NOT VALID check is checked on new rows only.
-- Every row written before 0015 gets '-infinity' ("before partitioning"): 0015's first
-- partition, this table itself, holds them.
ALTER TABLE order_task_events
    ADD COLUMN IF NOT EXISTS queue_created_at timestamptz NOT NULL DEFAULT '-infinity';
DO $$ BEGIN
    ALTER TABLE order_task_events ADD CONSTRAINT order_task_events_before_partitioning
        CHECK (queue_created_at = '-infinity') NOT VALID;
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
