-- DELETE /v1/notifications/{id} cancels the channels still held (deferred,
-- digested and not yet sent): their tracking rows end 'cancelled' (reason
-- 'cancelled'). The CHECK from 007_tracking_status is replaced with it added.
-- NOT VALID then VALIDATE: adding the CHECK takes only a brief lock; the scan
-- of delivery_tracking runs under VALIDATE's SHARE UPDATE EXCLUSIVE lock,
-- which does not block reads or writes.
ALTER TABLE delivery_tracking DROP CONSTRAINT delivery_tracking_status_check;
ALTER TABLE delivery_tracking ADD CONSTRAINT delivery_tracking_status_check CHECK (status IN (
    'pending', 'processing', 'sent', 'delivered', 'failed', 'bounced', 'complained',
    'rejected', 'expired', 'suppressed', 'deferred', 'digested', 'cancelled')) NOT VALID;
ALTER TABLE delivery_tracking VALIDATE CONSTRAINT delivery_tracking_status_check;
