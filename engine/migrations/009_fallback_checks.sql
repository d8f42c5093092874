-- A "fallback" row: the notification was sent on its channels; at due_at, if
-- none of them reached "delivered", its fallback channels are tried.
ALTER TABLE scheduled_notifications DROP CONSTRAINT scheduled_notifications_kind_check;
ALTER TABLE scheduled_notifications ADD CONSTRAINT scheduled_notifications_kind_check
    CHECK (kind IN ('deferred', 'digest', 'fallback'));
DROP INDEX idx_scheduled_due;
CREATE INDEX idx_scheduled_due ON scheduled_notifications (due_at)
    WHERE status = 'pending' AND kind IN ('deferred', 'fallback');
