-- 0018: the settle objective's month (docs/ops.md, Service-level objectives) without
-- counting a month of judgements: closed minutes are counted once, into
-- settle_slo_minutes, by the workers' periodic checks (settle_slo_roll_up), and
-- settle_slo_summary adds the few judgements not yet rolled up. At 100
-- withdrawals/s a month is 260 million judgements; the summary reads 43,200 minutes
-- (a row each a policy and result).
CREATE TABLE IF NOT EXISTS settle_slo_minutes (
    minute     timestamptz NOT NULL,  -- judgements with judged_at in [minute, minute + 1 min)
    policy     text NOT NULL,
    result     text NOT NULL,
    judgements bigint NOT NULL CHECK (judgements > 0),
    PRIMARY KEY (minute, policy, result)
);
-- One row: every judgement with judged_at before up_to is in settle_slo_minutes, and
-- none after it. Its row lock makes one roller at a time.
CREATE TABLE IF NOT EXISTS settle_slo_rolled (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    up_to     timestamptz NOT NULL CHECK (up_to = date_trunc('minute', up_to))
);
-- The past overdue judgements of withdrawals still open (PaymentSettleSLOBurn's runbook).
CREATE INDEX IF NOT EXISTS settle_slo_results_overdue ON settle_slo_results (queue_id)
    WHERE result = 'overdue';

-- Rolls up whole minutes after up_to, at most `most` of them a call (a new
-- installation's history catches up a call at a time). A judgement's judged_at is
-- its transaction's start (now()), and it is seen only at commit; so a minute is
-- closed only once no transaction that began in it can still commit one: up to the
-- oldest open transaction's start in this database, and `lag` before now.
CREATE OR REPLACE FUNCTION settle_slo_roll_up(
    lag interval DEFAULT '1 minute', most interval DEFAULT '1 hour'
) RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    since timestamptz;
    until timestamptz;
BEGIN
    SELECT up_to INTO since FROM settle_slo_rolled FOR UPDATE;
    IF since IS NULL THEN  -- the first call: from the first judgement there is
        INSERT INTO settle_slo_rolled (up_to)
        SELECT date_trunc('minute', coalesce(min(judged_at), now() - lag))
        FROM settle_slo_results
        ON CONFLICT (singleton) DO NOTHING;
        SELECT up_to INTO since FROM settle_slo_rolled FOR UPDATE;
    END IF;
    until := date_trunc('minute', least(
        now() - lag, since + most,
        (SELECT min(xact_start) FROM pg_stat_activity
         WHERE datname = current_database() AND backend_type = 'client backend')));
    IF until <= since THEN
        RETURN since;
    END IF;
    INSERT INTO settle_slo_minutes (minute, policy, result, judgements)
    SELECT date_trunc('minute', judged_at), policy, result, count(*)
    FROM settle_slo_results WHERE judged_at >= since AND judged_at < until
    GROUP BY 1, 2, 3;
    UPDATE settle_slo_rolled SET up_to = until;
    RETURN until;
END $$;

-- Judgements with judged_at in the last `period`, by policy and result: exactly
-- `SELECT policy, result, count(*) FROM settle_slo_results WHERE judged_at > now() -
-- period GROUP BY 1, 2` (tests/test_settle_slo_rollup.py), from three parts that do
-- not overlap: the window's first, partial minute and what was never rolled up from
-- the raw rows (by the judged_at index), the whole minutes between from the roll-up.
CREATE OR REPLACE FUNCTION settle_slo_summary(period interval DEFAULT '30 days')
RETURNS TABLE (policy text, result text, judgements bigint) LANGUAGE sql STABLE AS $$
    WITH bounds AS (
        SELECT now() - period AS since,
               coalesce((SELECT up_to FROM settle_slo_rolled), '-infinity') AS up_to
    ), parts AS (
        SELECT m.policy, m.result, m.judgements FROM settle_slo_minutes m, bounds b
        WHERE m.minute > b.since AND m.minute < b.up_to
        UNION ALL
        -- two ranges of the judged_at index, each bounded on both sides
        SELECT r.policy, r.result, count(*) FROM settle_slo_results r, bounds b
        WHERE r.judged_at > b.since
          AND r.judged_at < least(date_trunc('minute', b.since) + interval '1 minute', b.up_to)
        GROUP BY 1, 2
        UNION ALL
        SELECT r.policy, r.result, count(*) FROM settle_slo_results r, bounds b
        WHERE r.judged_at > b.since AND r.judged_at >= b.up_to
        GROUP BY 1, 2
    )
    SELECT p.policy, p.result, sum(p.judgements)::bigint FROM parts p
    GROUP BY 1, 2 ORDER BY 1, 2
$$;
