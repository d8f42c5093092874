-- The audit log verifiable end to end (stores/audit.py): rows from now on hash every
-- column (hash_version 2; older rows keep the rule they were written under), the
-- log refuses UPDATE, DELETE and TRUNCATE with an error instead of silently doing
-- nothing, and signed checkpoints of every chain's last row catch a chain cut short
-- or dropped (engine/audit.py). Checkpoints are chained to each other and refuse
-- changes too; only the heads of checkpoints older than the newest may be deleted
-- (verify uses the newest's).
ALTER TABLE preference_audit_log ADD COLUMN hash_version smallint NOT NULL DEFAULT 1;

DROP RULE preference_audit_log_no_update ON preference_audit_log;
DROP RULE preference_audit_log_no_delete ON preference_audit_log;
CREATE FUNCTION audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER preference_audit_log_append_only BEFORE UPDATE OR DELETE ON preference_audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse();
CREATE TRIGGER preference_audit_log_no_truncate BEFORE TRUNCATE ON preference_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();

CREATE TABLE audit_checkpoints (
    id           bigserial PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    max_id       bigint NOT NULL,      -- the log's last row when it was taken
    chains       bigint NOT NULL,
    digest       bytea NOT NULL,       -- of every chain's last row (stores.audit.heads_digest)
    prev_id      bigint,               -- the checkpoint before it (NULL: the first)
    prev_digest  bytea,                -- and its digest: signed, so none can be removed from between
    key_id       text NOT NULL,        -- which signing key (the first 16 hex of its public key's SHA-256)
    signature    bytea NOT NULL        -- Ed25519 over stores.audit.signed_payload
);
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();

CREATE TABLE audit_checkpoint_heads (
    checkpoint_id  bigint NOT NULL REFERENCES audit_checkpoints,
    user_id        text NOT NULL,
    head_id        bigint NOT NULL,
    head_hash      bytea NOT NULL,
    PRIMARY KEY (checkpoint_id, user_id)
);
CREATE FUNCTION audit_checkpoint_heads_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.checkpoint_id < (SELECT max(id) FROM audit_checkpoints) THEN
        RETURN OLD;  -- an older checkpoint's heads: verify no longer reads them
    END IF;
    RAISE EXCEPTION 'audit_checkpoint_heads: % refused (only the heads of older checkpoints may go)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_checkpoint_heads_guard BEFORE UPDATE OR DELETE ON audit_checkpoint_heads
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_heads_guard();
CREATE TRIGGER audit_checkpoint_heads_no_truncate BEFORE TRUNCATE ON audit_checkpoint_heads
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();
