-- 0014: the second step (docs/upgrades.md, "The partitioned audit trail"): what 0015
-- needs in order to attach this table as a partition without reading it under its lock.
-- * The partitioned table's primary key must hold its partition key: (id,
--   queue_created_at). Built here (a SHARE lock: writes wait for the build) only while
--   the table is small. A big table's is built by hand beforehand, CONCURRENTLY (writes
--   go on), and found here; this refuses to build it under the lock instead.
-- * VALIDATE reads the whole table under SHARE UPDATE EXCLUSIVE, which lets reads and
--   writes go on; the valid check then proves to ATTACH that every row belongs in the
--   partition, so 0015 reads nothing.
DO $$
DECLARE
    bytes bigint := pg_relation_size('order_task_events');
    key regclass := to_regclass('order_task_events_legacy_pkey');
BEGIN
    IF key IS NULL AND bytes > 256 * 1024 * 1024 THEN
        RAISE EXCEPTION 'order_task_events holds %: build its new key by hand first, without'
            ' blocking writes: CREATE UNIQUE INDEX CONCURRENTLY order_task_events_legacy_pkey'
            ' ON order_task_events (id, queue_created_at); then migrate again (docs/upgrades.md,'
            ' "The partitioned audit trail")', pg_size_pretty(bytes);
    END IF;
    IF key IS NOT NULL AND NOT (SELECT indisvalid FROM pg_index WHERE indexrelid = key) THEN
        RAISE EXCEPTION 'order_task_events_legacy_pkey is not valid (a CONCURRENTLY build that'
            ' failed): DROP INDEX CONCURRENTLY order_task_events_legacy_pkey, build it again,'
            ' then migrate again';
    END IF;
    -- Not CREATE INDEX IF NOT EXISTS: that takes its SHARE lock before it finds the index,
    -- and holds it to the end of the transaction, so writes would wait for VALIDATE.
    IF key IS NULL THEN
        CREATE UNIQUE INDEX order_task_events_legacy_pkey
            ON order_task_events (id, queue_created_at);
    END IF;
END $$;
ALTER TABLE order_task_events VALIDATE CONSTRAINT order_task_events_before_partitioning;
