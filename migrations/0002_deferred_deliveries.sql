-- Recipients in quiet hours whose send asked to defer: their row says
-- `deferred` until the state machine sends to them at `deferred_until`, and
-- then carries the final outcome instead (still one row per device).
ALTER TABLE deliveries ADD COLUMN deferred_until timestamptz;
CREATE INDEX deliveries_deferred ON deliveries (notification_id, deferred_until, device_id)
    WHERE outcome = 'deferred';
