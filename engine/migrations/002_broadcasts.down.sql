DROP INDEX IF EXISTS idx_delivery_tracking_parent;
ALTER TABLE delivery_tracking DROP COLUMN IF EXISTS parent_id;
ALTER TABLE users DROP COLUMN IF EXISTS shard_key;
