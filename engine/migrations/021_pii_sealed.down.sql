-- Reverses the schema only: sealed addresses cannot be opened in SQL, so rows
-- written since 021 lose their addresses and suppressions (seal_legacy's
-- reverse is not provided; restore a backup taken before 021 instead).
DROP INDEX idx_digest_buckets_user;
DROP INDEX idx_scheduled_user;
DROP TABLE erasure_receipts;
ALTER TABLE users DROP COLUMN legal_hold;
ALTER TABLE preference_audit_log DROP COLUMN sealed;
DELETE FROM suppressions WHERE address IS NULL;
DROP INDEX suppressions_blind;
ALTER TABLE suppressions DROP COLUMN blind;
ALTER TABLE suppressions ALTER COLUMN address SET NOT NULL;
ALTER TABLE suppressions ADD PRIMARY KEY (channel, address);
DELETE FROM user_addresses WHERE address IS NULL;
DROP INDEX idx_user_addresses_blind;
ALTER TABLE user_addresses DROP COLUMN blind;
ALTER TABLE user_addresses DROP COLUMN sealed;
ALTER TABLE user_addresses ALTER COLUMN address SET NOT NULL;
CREATE INDEX idx_user_addresses_address ON user_addresses (channel, address);
UPDATE users SET state = NULL WHERE state IS NOT NULL;
DROP TABLE user_keys;
DROP TABLE pii_keys;
