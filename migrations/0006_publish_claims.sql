-- Durable claims: a device is claimed here, in PostgreSQL, before its push,
-- so that "at most once" survives Redis losing its data. A claim with a
-- deliveries row is settled; one without is an attempt that stopped while
-- publishing (its push may have gone). A push that certainly did not leave
-- (throttled, out of time) has its claim deleted, so the page's retry
-- pushes it. Also what caps are rebuilt from when Redis lost its counters.
CREATE TABLE publish_claims (
    -- No foreign key: tools that truncate notifications (seeding, benchmarks) keep
    -- working; a claim of a notification that is gone joins nothing.
    notification_id uuid        NOT NULL,
    device_id       bigint      NOT NULL,
    user_id         bigint      NOT NULL,
    page            integer     NOT NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, device_id)
);
CREATE INDEX publish_claims_user_claimed ON publish_claims (user_id, claimed_at);

-- `unknown`: SNS's answer could not say whether the push went, and the
-- category is pushed at most once. (`removed`: a device deleted after its
-- send was planned, for the reconciler.)
ALTER TABLE deliveries DROP CONSTRAINT deliveries_outcome_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_outcome_check CHECK (outcome IN (
    'sent', 'opted_out', 'quiet_hours', 'deferred', 'capped', 'duplicate',
    'endpoint_disabled', 'failed', 'cancelled', 'unknown', 'removed'));
