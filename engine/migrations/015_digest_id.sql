-- A digested row names its digest in digest_id, so parent_id keeps naming the
-- broadcast it belongs to. Before this, joining a digest always overwrote a
-- digested row's parent_id with the digest's id (its broadcast, if any, was not
-- kept), so every digested row's parent_id is a digest: it moves to digest_id.
-- (Not checked against digest_buckets: retention removes sent buckets.)
ALTER TABLE delivery_tracking ADD COLUMN digest_id uuid;
UPDATE delivery_tracking SET digest_id = parent_id, parent_id = NULL
WHERE status = 'digested' AND parent_id IS NOT NULL;
CREATE INDEX idx_delivery_tracking_digest ON delivery_tracking (digest_id) WHERE digest_id IS NOT NULL;
