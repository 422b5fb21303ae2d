-- Timed sends. Every timed send is a schedule; each firing (or, for sends at
-- each recipient's local time, each time-zone group) is a run with its own
-- notification, counts and status.
CREATE TABLE schedules (
    id              uuid        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('once', 'recurring', 'local_time')),
    request         jsonb       NOT NULL,
    request_hash    text        NOT NULL,
    idempotency_key text        UNIQUE,
    send_at         timestamptz,
    cron            text,
    time_zone       text,
    start_at        timestamptz,
    end_at          timestamptz,
    local_time      time,
    local_date      date,
    if_passed       text        CHECK (if_passed IN ('tomorrow', 'now')),
    status          text        NOT NULL CHECK (status IN ('active', 'cancelled', 'completed')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    cancelled_at    timestamptz
);
CREATE INDEX schedules_status_created ON schedules (status, created_at DESC);

CREATE TABLE schedule_runs (
    schedule_id     uuid        NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    -- What makes a run unique: the scheduled time of a recurring firing, the
    -- zone of a local-time group, 'once' for a one-time send. A duplicate
    -- firing finds its run taken and sends nothing.
    run_key         text        NOT NULL,
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    scheduled_time  timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, run_key)
);
CREATE INDEX schedule_runs_notification ON schedule_runs (notification_id);

ALTER TABLE notifications ADD COLUMN schedule_id uuid REFERENCES schedules (id);
ALTER TABLE notifications ADD COLUMN send_at timestamptz;
