-- Broadcasts: a UserShard finds its users with shard_key % N = index
-- (shard_key = crc32(user_id), written by the shard; rows written elsewhere
-- without it are read by every shard and filtered in Python). Recipient
-- tracking rows point at their broadcast.

ALTER TABLE users ADD COLUMN shard_key bigint;

ALTER TABLE delivery_tracking ADD COLUMN parent_id uuid;
CREATE INDEX idx_delivery_tracking_parent ON delivery_tracking (parent_id, channel, status)
    WHERE parent_id IS NOT NULL;
