-- 0019: a writer wakes the relay only when it sleeps (activities/outbox_relay.py).
-- While events flow, the relay polls the outbox and holds advisory lock 7303024
-- (exclusive, on its session); a NOTIFY then only costs: PostgreSQL signals every
-- backend LISTENing in the database, on any channel, and each one reads the
-- notification in a transaction of its own. With 8 listeners that was 14 of the 24
-- commits a withdrawal cost (issue 24). A writer that takes the lock shared is one
-- that finds the relay asleep (or gone): it notifies, as before.
CREATE OR REPLACE FUNCTION outbox_wake_relay() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock_shared(7303024) THEN
        PERFORM pg_notify('payment_outbox', '');
    END IF;
    RETURN NULL;
END $$;
