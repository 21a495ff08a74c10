-- 0020: an API process leases a few of a provider's webhook tokens at once
-- (service/webhook_limits.py): `leased` is how many the last lease took, returned
-- to the process that took them. A column with a constant default: no rewrite, no
-- lock held longer than the catalogue change. Processes of the release before
-- never read it, and their inserts get the default (they take one token each).
ALTER TABLE webhook_limits ADD COLUMN IF NOT EXISTS leased integer NOT NULL DEFAULT 1;
