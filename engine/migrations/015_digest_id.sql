-- A digested row names its digest in digest_id, so parent_id keeps naming the
-- broadcast it belongs to. Rows digested before this kept only the digest (in
-- parent_id); it moves to digest_id (their broadcast, if any, was not recorded).
ALTER TABLE delivery_tracking ADD COLUMN digest_id uuid;
UPDATE delivery_tracking d SET digest_id = d.parent_id, parent_id = NULL
WHERE d.status = 'digested' AND d.parent_id IS NOT NULL
  AND EXISTS (SELECT 1 FROM digest_buckets b WHERE b.digest_id = d.parent_id);
CREATE INDEX idx_delivery_tracking_digest ON delivery_tracking (digest_id) WHERE digest_id IS NOT NULL;
