-- Every send ends, and its counts add up to its recipients.
--
-- A device deleted (or whose user was deleted) after a send planned it gets a
-- `removed` row. The plan keeps only page bounds, so a deleted device is
-- remembered here with what an audience matches on, as it was when deleted.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_outcome_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_outcome_check CHECK (outcome IN (
    'sent', 'opted_out', 'quiet_hours', 'deferred', 'capped',
    'duplicate', 'endpoint_disabled', 'failed', 'cancelled', 'removed'));
-- Rows the reconciler wrote for devices a dead execution never reached: a
-- redrive deletes them, so the pages it runs again can record what happens.
ALTER TABLE deliveries ADD COLUMN reconciled boolean NOT NULL DEFAULT false;

-- When Prepare planned the send (removals after it get rows), and when a
-- redrive resumed it (the reconciler's grace period starts again).
ALTER TABLE notifications ADD COLUMN planned_at timestamptz;
ALTER TABLE notifications ADD COLUMN resumed_at timestamptz;
CREATE INDEX notifications_unfinished ON notifications (created_at)
    WHERE status IN ('accepted', 'running');

CREATE TABLE removed_devices (
    device_id   bigint      PRIMARY KEY,
    user_id     bigint      NOT NULL,
    platform    text        NOT NULL,
    enabled     boolean     NOT NULL,
    disabled_at timestamptz,
    created_at  timestamptz NOT NULL,
    external_id text,
    locale      text,
    time_zone   text,
    attributes  jsonb,
    topics      text[]      NOT NULL DEFAULT '{}',
    removed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX removed_devices_removed_at ON removed_devices (removed_at);

CREATE FUNCTION remember_removed_device() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO removed_devices (device_id, user_id, platform, enabled, disabled_at,
        created_at, external_id, locale, time_zone, attributes, topics)
    SELECT OLD.id, OLD.user_id, OLD.platform, OLD.enabled, OLD.disabled_at, OLD.created_at,
        u.external_id, u.locale, u.time_zone, u.attributes,
        coalesce((SELECT array_agg(t.topic) FROM topic_subscriptions t
                  WHERE t.user_id = OLD.user_id), '{}')
    FROM (SELECT 1) one LEFT JOIN users u ON u.id = OLD.user_id
    ON CONFLICT (device_id) DO UPDATE SET removed_at = excluded.removed_at;
    RETURN OLD;
END $$;
CREATE TRIGGER devices_remember_removed BEFORE DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION remember_removed_device();

-- A user's devices go before the user (not by the cascade, which runs after
-- the user row is gone), so each removed device keeps its user's attributes.
CREATE FUNCTION remove_user_devices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM devices WHERE user_id = OLD.id;
    RETURN OLD;
END $$;
CREATE TRIGGER users_remove_devices_first BEFORE DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION remove_user_devices();
