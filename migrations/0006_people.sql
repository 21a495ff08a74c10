-- 0006: people sign in as themselves (issue 21; service/identity.py, docs/ops.md
-- "People and permissions").
--
-- Roles come from the issuer's groups claim (OIDC_GROUP_ROLES) and from these
-- grants, which the service owns: one per person and role, the person named by the
-- issuer's subject (stable) or by a verified email. Read on every request, so a
-- deleted grant takes effect at once.
CREATE TABLE IF NOT EXISTS role_grants (
    id         bigserial PRIMARY KEY,
    issuer     text NOT NULL,
    subject    text,
    email      text,
    role       text NOT NULL CHECK (role IN ('viewer', 'resolver', 'approver', 'admin')),
    granted_by text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(subject, email) = 1)
);
CREATE UNIQUE INDEX IF NOT EXISTS role_grants_subject
    ON role_grants (issuer, subject, role) WHERE subject IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS role_grants_email
    ON role_grants (issuer, lower(email), role) WHERE email IS NOT NULL;

-- Who signed in to the console, and every break-glass sign-in (also an outbox
-- event and the break_glass_sign_ins_total counter, which pages).
CREATE TABLE IF NOT EXISTS people_events (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    actor       text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS people_events_kind ON people_events (kind, id);
