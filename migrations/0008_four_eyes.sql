-- 0008: four-eyes on money (issue 21; service/approvals.py, docs/ops.md "Four-eyes
-- approvals"). A manual-check decision that needs a second person is a proposal
-- until an approver approves it. People are kept as the audit trail names them
-- (`proposed_by`, `decided_by`) and by their issuer and subject, which is what makes
-- two people two: the database itself refuses a proposal decided by its proposer.
-- `task_version`: the task as the proposer saw it; an approval of a task that has
-- moved on since is refused, and the proposal superseded.
CREATE TABLE IF NOT EXISTS manual_check_proposals (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id          uuid NOT NULL REFERENCES order_tasks (id),
    queue_id         uuid NOT NULL REFERENCES order_queues (id),
    outcome          text NOT NULL CHECK (outcome IN ('positive', 'negative')),
    reason           text NOT NULL,
    proposed_by      text NOT NULL,
    proposer_issuer  text NOT NULL,
    proposer_subject text NOT NULL,
    proposed_at      timestamptz NOT NULL DEFAULT now(),
    task_version     integer NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'rejected', 'expired', 'superseded')),
    decided_by       text,
    decider_issuer   text,
    decider_subject  text,
    decided_at       timestamptz,
    decision_reason  text,
    expires_at       timestamptz NOT NULL,
    CONSTRAINT decided_unless_pending CHECK ((status = 'pending') = (decided_at IS NULL)),
    CONSTRAINT four_eyes CHECK (
        status NOT IN ('approved', 'rejected')
        OR (num_nonnulls(decided_by, decider_issuer, decider_subject) = 3
            AND ROW(decider_issuer, decider_subject)
                IS DISTINCT FROM ROW(proposer_issuer, proposer_subject)))
);
-- One decision in flight per task; the worker's checks find the due ones.
CREATE UNIQUE INDEX IF NOT EXISTS manual_check_proposals_one_pending
    ON manual_check_proposals (task_id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS manual_check_proposals_due
    ON manual_check_proposals (expires_at) WHERE status = 'pending';
