DROP TABLE audit_checkpoint_heads;
DROP FUNCTION audit_checkpoint_heads_guard();
DROP TABLE audit_checkpoints;
DROP TRIGGER preference_audit_log_no_truncate ON preference_audit_log;
DROP TRIGGER preference_audit_log_append_only ON preference_audit_log;
DROP FUNCTION audit_refuse();
CREATE RULE preference_audit_log_no_update AS ON UPDATE TO preference_audit_log DO INSTEAD NOTHING;
CREATE RULE preference_audit_log_no_delete AS ON DELETE TO preference_audit_log DO INSTEAD NOTHING;
ALTER TABLE preference_audit_log DROP COLUMN hash_version;
