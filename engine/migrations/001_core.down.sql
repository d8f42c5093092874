DROP TABLE IF EXISTS delivery_tracking;
DROP TABLE IF EXISTS preference_audit_log;
DROP TABLE IF EXISTS user_preferences;
DROP TABLE IF EXISTS suppressions;
DROP TABLE IF EXISTS user_addresses;
DROP TABLE IF EXISTS users;
