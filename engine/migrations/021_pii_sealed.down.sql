-- Reverses the schema of a database that holds nothing sealed yet. Once
-- anything is sealed it refuses: sealed addresses cannot be opened in SQL (the
-- keys are not in the database), version-3 audit rows cannot be verified
-- without their sealed column, and every suppression is a blind index only
-- (dropping them would mail addresses that bounced). Restore a backup taken
-- before 021 instead.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM preference_audit_log WHERE hash_version >= 3)
       OR EXISTS (SELECT 1 FROM user_addresses WHERE sealed IS NOT NULL)
       OR EXISTS (SELECT 1 FROM suppressions WHERE blind IS NOT NULL) THEN
        RAISE EXCEPTION '021_pii_sealed cannot be reversed: the database holds sealed data (restore a backup from before it)';
    END IF;
END
$$;
DROP INDEX idx_digest_buckets_user;
DROP INDEX idx_scheduled_user;
DROP INDEX idx_user_addresses_plaintext;
DROP INDEX idx_suppressions_plaintext;
DROP TABLE erasure_receipts;
ALTER TABLE users DROP COLUMN legal_hold;
ALTER TABLE preference_audit_log DROP COLUMN sealed;
DROP INDEX suppressions_blind;
ALTER TABLE suppressions DROP COLUMN blind;
ALTER TABLE suppressions ALTER COLUMN address SET NOT NULL;
ALTER TABLE suppressions ADD PRIMARY KEY (channel, address);
DROP INDEX idx_user_addresses_blind;
ALTER TABLE user_addresses DROP COLUMN blind;
ALTER TABLE user_addresses DROP COLUMN sealed;
ALTER TABLE user_addresses ALTER COLUMN address SET NOT NULL;
CREATE INDEX idx_user_addresses_address ON user_addresses (channel, address);
UPDATE users SET state = NULL WHERE state IS NOT NULL;
DROP TABLE user_keys;
DROP TABLE pii_keys;
