"""Local dev stack: embedded PostgreSQL and NATS unless DATABASE_URL/NATS_URL; make stop/status."""
