-- 0011: the settle objective (docs/ops.md "Service-level objectives";
-- service/settle_slo.py). Each withdrawal is judged once against SETTLE_SLO_S:
-- on_time or late when it settles (final, or a task sent to a person), overdue
-- when the workers' periodic checks find it unsettled past its deadline. The
-- primary key is what makes it once, whichever process comes first; the rows are
-- also the objective's own record, to report a month from SQL.
CREATE TABLE IF NOT EXISTS settle_slo_results (
    queue_id   uuid PRIMARY KEY REFERENCES order_queues (id),
    policy     text NOT NULL,
    result     text NOT NULL CHECK (result IN ('on_time', 'late', 'overdue', 'not_judged')),
    judged_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS settle_slo_results_judged ON settle_slo_results (judged_at);
-- Withdrawals in flight when this runs are not judged: whether one already
-- reached a person was not recorded, and judging them all at once would page on
-- the upgrade rather than on an incident.
INSERT INTO settle_slo_results (queue_id, policy, result)
SELECT id, policy, 'not_judged' FROM order_queues WHERE status = 'ACTIVE';
