-- 026_cancelled's CHECK, added NOT VALID, validated here in a transaction of its
-- own: the scan of delivery_tracking holds SHARE UPDATE EXCLUSIVE, which blocks
-- neither reads nor writes (026's ACCESS EXCLUSIVE lock was released at its commit).
ALTER TABLE delivery_tracking VALIDATE CONSTRAINT delivery_tracking_status_check;
