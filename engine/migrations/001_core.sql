-- Users, their channel addresses, the suppression list, preferences (minimal
-- use for now: opt-outs), the preference audit log, and delivery tracking.
-- User ids are text: producers' ids are not always UUIDs.

CREATE TABLE users (
    user_id     text PRIMARY KEY,
    timezone    text NOT NULL DEFAULT 'UTC',
    locale      text NOT NULL DEFAULT 'en',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_addresses (
    user_id     text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    channel     text NOT NULL,
    address     text NOT NULL,
    verified    boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel)
);
CREATE INDEX idx_user_addresses_address ON user_addresses (channel, address);

-- An address that must not be used (hard bounce, complaint, manual), whoever owns it.
CREATE TABLE suppressions (
    channel     text NOT NULL,
    address     text NOT NULL,
    reason      text NOT NULL CHECK (reason ~ '^[a-z_]+$'),
    source      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, address)
);

-- Per the preferences design; only rows that differ from the defaults are stored.
CREATE TABLE user_preferences (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    preference_type text NOT NULL CHECK (preference_type IN ('global', 'channel', 'category', 'content', 'contextual')),
    channel         text NOT NULL,          -- '*' for every channel
    category        text NOT NULL,          -- '*' for every category
    content_type    text NOT NULL DEFAULT '*',
    value           jsonb NOT NULL,
    priority        integer NOT NULL DEFAULT 0,
    is_active       boolean NOT NULL DEFAULT true,
    context         jsonb,
    metadata        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    UNIQUE (user_id, channel, category, content_type)
);
CREATE INDEX idx_user_preferences_user_id ON user_preferences (user_id);
CREATE INDEX idx_user_preferences_active ON user_preferences (is_active) WHERE is_active;
CREATE INDEX idx_user_preferences_expires ON user_preferences (expires_at) WHERE expires_at IS NOT NULL;

-- Append-only; each row carries the hash of the previous one (per user), so a
-- changed or deleted row breaks the chain.
CREATE TABLE preference_audit_log (
    id            bigserial PRIMARY KEY,
    user_id       text NOT NULL,
    action        text NOT NULL,
    old_value     jsonb,
    new_value     jsonb,
    reason        text,
    performed_by  text,
    ip_address    inet,
    user_agent    text,
    prev_hash     bytea,
    hash          bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_preference_audit_log_user_id ON preference_audit_log (user_id, id);
CREATE INDEX idx_preference_audit_log_created_at ON preference_audit_log (created_at);
CREATE RULE preference_audit_log_no_update AS ON UPDATE TO preference_audit_log DO INSTEAD NOTHING;
CREATE RULE preference_audit_log_no_delete AS ON DELETE TO preference_audit_log DO INSTEAD NOTHING;

-- One row per (notification, channel): its terminal outcome, with every attempt in
-- the timeline. channel '*' is a request rejected before it had channels.
CREATE TABLE delivery_tracking (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    notification_id     uuid NOT NULL,
    user_id             text NOT NULL,
    channel             text NOT NULL,
    category            text NOT NULL,
    priority            text NOT NULL DEFAULT 'normal',
    status              text NOT NULL CHECK (status IN (
                            'pending', 'processing', 'sent', 'delivered', 'failed', 'bounced',
                            'rejected', 'expired', 'suppressed', 'deferred', 'digested')),
    reason              text NOT NULL,
    provider            text,
    provider_message_id text,
    attempts            integer NOT NULL DEFAULT 0,
    timeline            jsonb NOT NULL DEFAULT '[]',
    errors              jsonb,
    accepted_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz,
    UNIQUE (notification_id, channel)   -- redelivery is idempotent; also the lookup index
);
CREATE INDEX idx_delivery_tracking_user ON delivery_tracking (user_id);
CREATE INDEX idx_delivery_tracking_status ON delivery_tracking (status);
CREATE INDEX idx_delivery_tracking_created ON delivery_tracking (created_at);
