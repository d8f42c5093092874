DROP INDEX IF EXISTS idx_delivery_tracking_provider_message;
-- Back to 001_core's CHECK. A 'complained' row becomes 'delivered' when its
-- timeline has a delivery event (the complaint came after delivery), else
-- 'failed'; its reason still names the complaint.
UPDATE delivery_tracking
   SET status = CASE WHEN timeline @> '[{"event": "delivered"}]' OR timeline @> '[{"event": "completed"}]'
                     THEN 'delivered' ELSE 'failed' END,
       updated_at = now()
 WHERE status = 'complained';
ALTER TABLE delivery_tracking DROP CONSTRAINT delivery_tracking_status_check;
ALTER TABLE delivery_tracking ADD CONSTRAINT delivery_tracking_status_check CHECK (status IN (
    'pending', 'processing', 'sent', 'delivered', 'failed', 'bounced',
    'rejected', 'expired', 'suppressed', 'deferred', 'digested'));
