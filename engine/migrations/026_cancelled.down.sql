ALTER TABLE scheduled_notifications DROP COLUMN claims, DROP COLUMN settled, DROP COLUMN cancelled_at;
-- Back to 007_tracking_status's CHECK. A 'cancelled' row becomes 'suppressed'
-- (not sent, by a decision: as a notification past its ttl is recorded); its
-- reason still says 'cancelled'. The rewrite is bookkeeping, not a delivery
-- event: status_events_updated (024) is disabled around it so no status event
-- is sent for it.
ALTER TABLE delivery_tracking DISABLE TRIGGER status_events_updated;
UPDATE delivery_tracking SET status = 'suppressed', updated_at = now() WHERE status = 'cancelled';
ALTER TABLE delivery_tracking ENABLE TRIGGER status_events_updated;
ALTER TABLE delivery_tracking DROP CONSTRAINT delivery_tracking_status_check;
ALTER TABLE delivery_tracking ADD CONSTRAINT delivery_tracking_status_check CHECK (status IN (
    'pending', 'processing', 'sent', 'delivered', 'failed', 'bounced', 'complained',
    'rejected', 'expired', 'suppressed', 'deferred', 'digested')) NOT VALID;
-- Left NOT VALID: validating here would scan delivery_tracking under this
-- transaction's ACCESS EXCLUSIVE lock. Every row satisfies it (the UPDATE above
-- rewrote the only ones that did not) and it holds for every row written; run
-- VALIDATE CONSTRAINT delivery_tracking_status_check on its own if wanted.
