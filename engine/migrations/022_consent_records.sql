-- Consent records (docs/privacy.md, "Consent"): per user × channel × purpose
-- ('*': every purpose on the channel, what a plain {"sms": "granted"} gives),
-- with status, legal basis, source, the evidence (sealed under the user's key:
-- it may hold an IP address), the text's version and an expiry; every change
-- also in an append-only history.
ALTER TABLE preference_consent ADD COLUMN purpose text NOT NULL DEFAULT '*'
    CHECK (purpose ~ '^(\*|[a-z][a-z0-9_]{0,31})$');
ALTER TABLE preference_consent DROP CONSTRAINT preference_consent_pkey;
ALTER TABLE preference_consent ADD PRIMARY KEY (user_id, channel, purpose);
ALTER TABLE preference_consent DROP CONSTRAINT preference_consent_status_check;
ALTER TABLE preference_consent ADD CONSTRAINT preference_consent_status_check
    CHECK (status IN ('pending', 'granted', 'withdrawn', 'expired'));
ALTER TABLE preference_consent ADD COLUMN basis text NOT NULL DEFAULT 'consent'
    CHECK (basis IN ('consent', 'contract', 'legal_obligation', 'vital_interests', 'public_task',
                     'legitimate_interests'));
ALTER TABLE preference_consent ADD COLUMN text_version text;
ALTER TABLE preference_consent ADD COLUMN evidence bytea;
ALTER TABLE preference_consent ADD COLUMN expires_at timestamptz;

CREATE TABLE preference_consent_history (
    id            bigserial PRIMARY KEY,
    user_id       text NOT NULL,
    channel       text NOT NULL,
    purpose       text NOT NULL,
    status        text NOT NULL,
    basis         text NOT NULL,
    source        text,
    text_version  text,
    evidence      bytea,
    expires_at    timestamptz,
    actor         text,
    at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_consent_history_user ON preference_consent_history (user_id, id);
CREATE TRIGGER preference_consent_history_append_only BEFORE UPDATE ON preference_consent_history
    FOR EACH ROW EXECUTE FUNCTION audit_refuse();
CREATE TRIGGER preference_consent_history_no_truncate BEFORE TRUNCATE ON preference_consent_history
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();

-- Stored states carry consent by key and status now: recomputed when next read.
UPDATE users SET state = NULL WHERE state IS NOT NULL;
