DELETE FROM scheduled_notifications WHERE kind = 'fallback';
DROP INDEX idx_scheduled_due;
CREATE INDEX idx_scheduled_due ON scheduled_notifications (due_at) WHERE status = 'pending' AND kind = 'deferred';
ALTER TABLE scheduled_notifications DROP CONSTRAINT scheduled_notifications_kind_check;
ALTER TABLE scheduled_notifications ADD CONSTRAINT scheduled_notifications_kind_check
    CHECK (kind IN ('deferred', 'digest'));
