UPDATE delivery_tracking SET parent_id = digest_id WHERE digest_id IS NOT NULL;
DROP INDEX IF EXISTS idx_delivery_tracking_digest;
ALTER TABLE delivery_tracking DROP COLUMN digest_id;
