-- Provider tracking webhooks (engine/http_tracking.py) move a delivery to
-- 'complained' (a spam complaint, or an SMS STOP). The CHECK from 001_core is
-- replaced under its generated name, with 'complained' added.
ALTER TABLE delivery_tracking DROP CONSTRAINT delivery_tracking_status_check;
ALTER TABLE delivery_tracking ADD CONSTRAINT delivery_tracking_status_check CHECK (status IN (
    'pending', 'processing', 'sent', 'delivered', 'failed', 'bounced', 'complained',
    'rejected', 'expired', 'suppressed', 'deferred', 'digested'));

-- Status callbacks without our notification id (Twilio) find their row by the
-- provider's message id.
CREATE INDEX idx_delivery_tracking_provider_message ON delivery_tracking (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
