-- Each user's state as of their last committed write (MessagePack, see
-- actors/user_cache.Stored), so a shard loads a user with one row instead of
-- five queries. NULL: not computed (rows written by a bulk import or by hand);
-- readers then assemble it from the tables.
ALTER TABLE users ADD COLUMN state bytea;
