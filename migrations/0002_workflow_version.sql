-- 0002: each withdrawal records the version of the workflow definition it started
-- on (workflows/registry.py), and is driven by that version until it ends.
-- Withdrawals already in flight ran version 1, the only one there was; so does a
-- withdrawal that a process of the previous release submits during a rolling
-- deploy (it does not know the column), hence the default.
-- A constant default adds the column without rewriting the table (PostgreSQL 11+).
ALTER TABLE order_queues ADD COLUMN workflow_version integer NOT NULL DEFAULT 1;
