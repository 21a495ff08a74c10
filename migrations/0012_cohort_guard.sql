-- 0012: the cohort guard's window (issue 22; service/cohort_guard.py). Every
-- GUARD_EVERY_S one worker counts the settled withdrawals submitted in the last
-- hour (by default), per policy, and whether each ever met a manual check.
-- Both tables are big on a busy installation: build these by hand first, CONCURRENTLY
-- (docs/upgrades.md), and this migration finds them and does nothing.
-- The window's withdrawals, by submission time (the existing index on created_at
-- holds live ones only).
CREATE INDEX IF NOT EXISTS order_queues_created ON order_queues (created_at);
-- A withdrawal's entries into MANUAL_CHECK: a probe of these rows only, never of
-- its whole timeline.
CREATE INDEX IF NOT EXISTS order_task_events_manual ON order_task_events (queue_id)
    WHERE to_state = 'MANUAL_CHECK';
