-- The audit log verifiable end to end (stores/audit.py): rows from now on hash every
-- column (hash_version 2; older rows keep the rule they were written under), the
-- log refuses UPDATE, DELETE and TRUNCATE with an error instead of silently doing
-- nothing, and signed checkpoints of every chain's last row catch a chain cut short
-- or dropped (engine/audit.py).
ALTER TABLE preference_audit_log ADD COLUMN hash_version smallint NOT NULL DEFAULT 1;

DROP RULE preference_audit_log_no_update ON preference_audit_log;
DROP RULE preference_audit_log_no_delete ON preference_audit_log;
CREATE FUNCTION preference_audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'preference_audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER preference_audit_log_append_only BEFORE UPDATE OR DELETE ON preference_audit_log
    FOR EACH ROW EXECUTE FUNCTION preference_audit_log_refuse();
CREATE TRIGGER preference_audit_log_no_truncate BEFORE TRUNCATE ON preference_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION preference_audit_log_refuse();

CREATE TABLE audit_checkpoints (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    max_id      bigint NOT NULL,      -- the log's last row when it was taken
    chains      bigint NOT NULL,
    digest      bytea NOT NULL,       -- of every chain's last row (stores.audit.heads_digest)
    key_id      text NOT NULL,        -- which signing key (the first 16 hex of its public key's SHA-256)
    signature   bytea NOT NULL        -- Ed25519 over stores.audit.signed_payload
);
CREATE TABLE audit_checkpoint_heads (
    checkpoint_id  bigint NOT NULL REFERENCES audit_checkpoints ON DELETE CASCADE,
    user_id        text NOT NULL,
    head_id        bigint NOT NULL,
    head_hash      bytea NOT NULL,
    PRIMARY KEY (checkpoint_id, user_id)
);
