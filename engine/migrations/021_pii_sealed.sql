-- Personal data sealed at rest under per-user keys (infra/pii.py, stores/pii.py,
-- docs/privacy.md). Keys never leave the engine unwrapped: user_keys holds each
-- user's data key wrapped by a master key from the environment; deleting that
-- row (erasure) makes everything sealed under it unreadable, copies included.
-- Addresses are found through a keyed blind index instead of their text. Rows
-- written before this migration are sealed by the engine when it starts
-- (stores.pii.seal_legacy): it cannot be done in SQL, the keys are not here.
CREATE TABLE pii_keys (
    name        text PRIMARY KEY,            -- 'index': the blind index's HMAC key
    master_id   text NOT NULL,
    wrapped     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz
);

-- Deleted with its user (erasure deletes it first, explicitly); the reference
-- also keeps a key from being made for a user an erasure is deleting.
CREATE TABLE user_keys (
    user_id     text PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    master_id   text NOT NULL,               -- which master key wraps it (rotation re-wraps)
    wrapped     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_user_keys_master ON user_keys (master_id);

-- address: plaintext of rows written before; NULL once sealed, never written again
ALTER TABLE user_addresses ALTER COLUMN address DROP NOT NULL;
ALTER TABLE user_addresses ADD COLUMN sealed bytea;
ALTER TABLE user_addresses ADD COLUMN blind bytea;
DROP INDEX idx_user_addresses_address;
CREATE INDEX idx_user_addresses_blind ON user_addresses (channel, blind);

-- A suppression is the address's blind index only: it must outlive the person's
-- erasure (an erased address stays suppressed), so nothing readable is kept.
ALTER TABLE suppressions DROP CONSTRAINT suppressions_pkey;
ALTER TABLE suppressions ALTER COLUMN address DROP NOT NULL;
ALTER TABLE suppressions ADD COLUMN blind bytea;
CREATE UNIQUE INDEX suppressions_blind ON suppressions (channel, blind);

-- Audit rows from now on (hash_version 3) keep old value, new value, IP address
-- and user agent sealed under the user's key; the hash covers the ciphertext, so
-- a chain stays verifiable after its user's key is destroyed.
ALTER TABLE preference_audit_log ADD COLUMN sealed bytea;

-- The stored states held addresses in plaintext: recomputed (sealed) when next read.
UPDATE users SET state = NULL WHERE state IS NOT NULL;

-- Erasure (stores/erasure.py): a legal hold refuses it; a receipt proves it.
ALTER TABLE users ADD COLUMN legal_hold text;  -- NULL: none; else why (a case reference)
CREATE TABLE erasure_receipts (
    id            uuid PRIMARY KEY,
    user_id       text NOT NULL,
    requested_by  text,
    erased_at     timestamptz NOT NULL DEFAULT now(),
    deleted       jsonb NOT NULL,            -- rows deleted per table
    audit_row     bigint NOT NULL,           -- the chain's 'gdpr.erase' row (its hash is in the checkpoints)
    audit_hash    bytea NOT NULL
);
CREATE INDEX idx_erasure_receipts_user ON erasure_receipts (user_id);
CREATE TRIGGER erasure_receipts_append_only BEFORE UPDATE OR DELETE ON erasure_receipts
    FOR EACH ROW EXECUTE FUNCTION audit_refuse();
CREATE TRIGGER erasure_receipts_no_truncate BEFORE TRUNCATE ON erasure_receipts
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();
-- what seal_legacy looks for at every start: empty once done, so found at once
CREATE INDEX idx_user_addresses_plaintext ON user_addresses (user_id) WHERE address IS NOT NULL;
CREATE INDEX idx_suppressions_plaintext ON suppressions (channel) WHERE address IS NOT NULL;
-- what an erasure deletes by user, found without a scan of the table
CREATE INDEX idx_scheduled_user ON scheduled_notifications (user_id);
CREATE INDEX idx_digest_buckets_user ON digest_buckets (user_id);
