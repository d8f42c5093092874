-- A tracking row is identified by (notification_id, channel): unique already,
-- and what every lookup, update and ON CONFLICT of this version uses. The
-- random surrogate id's primary key was one more unique index every insert
-- wrote at a random place (a broadcast inserts one row per recipient): it goes.
-- The id column itself stays, with its default, for instances of an earlier
-- version still running during a rolling upgrade (they update by id: without
-- its index that is slower, not wrong); a later migration drops it once no such
-- version can run. The unique constraint becomes the row's identity for logical
-- replication (a primary key would need a new index built under a lock; these
-- are catalogue changes only). The status index served no query (lookups go by
-- notification, user, parent, provider message or creation time) and was
-- written on every insert and status change.

-- 024's update trigger paired old and new rows by id; the pair never changes.
CREATE OR REPLACE FUNCTION status_events_tracking_updated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO status_events (notification_id, user_id, channel, category, status, reason, provider, parent_id)
    SELECT n.notification_id, n.user_id, n.channel, n.category, n.status, n.reason, n.provider, n.parent_id
    FROM new_rows n JOIN old_rows o ON o.notification_id = n.notification_id AND o.channel = n.channel
    WHERE n.status IS DISTINCT FROM o.status;
    IF FOUND THEN  -- NOTIFY takes a cluster-wide lock at commit: only when an event was written
        PERFORM pg_notify('tidings_status_events', '');
    END IF;
    RETURN NULL;
END $$;

DROP INDEX IF EXISTS idx_delivery_tracking_status;
-- The same for user_preferences (is_active) WHERE is_active: it holds nearly every row,
-- and without statistics the planner ANDed it into a batch's lookup by user id,
-- reading all of it for a 5,000-user chunk.
DROP INDEX IF EXISTS idx_user_preferences_active;

DO $$
DECLARE
    primary_key text;
    unique_index text;
BEGIN  -- by what they are, not by the names PostgreSQL gave them
    SELECT conname INTO primary_key FROM pg_constraint
    WHERE conrelid = 'delivery_tracking'::regclass AND contype = 'p';
    IF primary_key IS NOT NULL THEN
        EXECUTE format('ALTER TABLE delivery_tracking DROP CONSTRAINT %I', primary_key);
    END IF;
    SELECT i.relname INTO STRICT unique_index
    FROM pg_constraint c JOIN pg_class i ON i.oid = c.conindid
    WHERE c.conrelid = 'delivery_tracking'::regclass AND c.contype = 'u'
      AND c.conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = 'delivery_tracking'::regclass
                                                              AND attname = 'notification_id'),
                           (SELECT attnum FROM pg_attribute WHERE attrelid = 'delivery_tracking'::regclass
                                                              AND attname = 'channel')]::int2[];
    EXECUTE format('ALTER TABLE delivery_tracking REPLICA IDENTITY USING INDEX %I', unique_index);
END $$;
