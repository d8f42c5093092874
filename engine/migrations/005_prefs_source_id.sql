-- A change that arrived as a JetStream message carries that message's identity,
-- so a redelivery after a crash between commit and ack is applied once.
ALTER TABLE preference_sync_log ADD COLUMN source_id text;
CREATE UNIQUE INDEX idx_preference_sync_log_source ON preference_sync_log (source_id) WHERE source_id IS NOT NULL;
