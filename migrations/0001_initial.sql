-- Pushflow's data: who can be reached (users, devices, preferences, topics)
-- and what was sent (notifications, deliveries).

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id text        NOT NULL UNIQUE CHECK (length(external_id) BETWEEN 1 AND 128),
    locale      text        NOT NULL DEFAULT 'en',
    time_zone   text        NOT NULL DEFAULT 'UTC',
    attributes  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform        text        NOT NULL CHECK (platform IN ('ios', 'android')),
    token           text        NOT NULL,
    endpoint_arn    text        NOT NULL,
    sandbox         boolean     NOT NULL DEFAULT false,
    enabled         boolean     NOT NULL DEFAULT true,
    disabled_reason text,
    disabled_at     timestamptz,
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (platform, token)
);
-- Keyset pagination over the reachable devices: pages are id ranges of this index.
CREATE INDEX devices_enabled_id ON devices (id) WHERE enabled;
CREATE INDEX devices_user_id ON devices (user_id);
CREATE INDEX devices_endpoint_arn ON devices (endpoint_arn);

CREATE TABLE preferences (
    user_id              bigint      PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    opted_out_categories text[]      NOT NULL DEFAULT '{}',
    quiet_hours_start    time,
    quiet_hours_end      time,
    -- {"marketing": 2}: this user's own daily cap per category.
    cap_overrides        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((quiet_hours_start IS NULL) = (quiet_hours_end IS NULL))
);

CREATE TABLE topic_subscriptions (
    topic      text        NOT NULL CHECK (length(topic) BETWEEN 1 AND 128),
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, user_id)
);
CREATE INDEX topic_subscriptions_user ON topic_subscriptions (user_id);

CREATE TABLE notifications (
    id              uuid        PRIMARY KEY,
    idempotency_key text        UNIQUE,
    request_hash    text        NOT NULL,
    request         jsonb       NOT NULL,
    category        text        NOT NULL,
    status          text        NOT NULL CHECK (status IN (
                        'accepted', 'scheduled', 'running', 'completed',
                        'completed_with_failures', 'failed', 'cancelled')),
    counts          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recipient_count integer,
    page_count      integer,
    execution_arn   text,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz
);
CREATE INDEX notifications_status_created ON notifications (status, created_at DESC);

CREATE TABLE deliveries (
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    device_id       bigint      NOT NULL,
    user_id         bigint      NOT NULL,
    page            integer     NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN (
                        'sent', 'opted_out', 'quiet_hours', 'deferred', 'capped',
                        'duplicate', 'endpoint_disabled', 'failed', 'cancelled')),
    sns_message_id  text,
    error           text,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- One row per device and send: a retried page can never add a second one.
    PRIMARY KEY (notification_id, device_id)
);
CREATE INDEX deliveries_notification_outcome ON deliveries (notification_id, outcome);
