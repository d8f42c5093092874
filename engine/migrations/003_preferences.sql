-- The full preference model: versions (ETag), templates with versions and
-- inheritance, consent, the change feed (preference_sync_log), deferred and
-- digest notifications (scheduled_notifications + digest_buckets), bulk jobs.

ALTER TABLE users ADD COLUMN prefs_version bigint NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN template_id text;

-- A row is identified by (channel, category, content_type, context); the
-- context in canonical text ("device=mobile&location=home", '' for none).
ALTER TABLE user_preferences ADD COLUMN context_key text NOT NULL DEFAULT '';
ALTER TABLE user_preferences DROP CONSTRAINT user_preferences_user_id_channel_category_content_type_key;
ALTER TABLE user_preferences ADD CONSTRAINT user_preferences_key
    UNIQUE (user_id, channel, category, content_type, context_key);

-- Each version of a template is a row; a user follows the newest version of its
-- template. "extends" names the parent template (its newest version).
CREATE TABLE preference_templates (
    id           text NOT NULL,
    version      integer NOT NULL,
    name         text NOT NULL DEFAULT '',
    description  text NOT NULL DEFAULT '',
    extends      text,
    preferences  jsonb NOT NULL,
    is_active    boolean NOT NULL DEFAULT true,
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, version)
);

CREATE TABLE preference_consent (
    user_id       text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    channel       text NOT NULL,
    status        text NOT NULL CHECK (status IN ('granted', 'withdrawn')),
    source        text,
    granted_at    timestamptz,
    withdrawn_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel)
);

-- The change feed: one row per committed change of a user's preferences, in
-- version order. sync_status says whether it was published on NATS yet.
CREATE TABLE preference_sync_log (
    id            bigserial PRIMARY KEY,
    user_id       text NOT NULL,
    version       bigint NOT NULL,
    sync_type     text NOT NULL,
    source        text NOT NULL,
    changes       jsonb NOT NULL,
    sync_status   text NOT NULL DEFAULT 'pending' CHECK (sync_status IN ('pending', 'completed', 'failed')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    UNIQUE (user_id, version)
);
CREATE INDEX idx_preference_sync_log_pending ON preference_sync_log (id) WHERE sync_status = 'pending';

-- A notification held for later on one channel: deferred (quiet hours, time
-- windows) until due_at, or collected in a digest bucket. "request" is the
-- MessagePack request. Redelivery cannot add it twice: (notification, channel).
CREATE TABLE scheduled_notifications (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('deferred', 'digest')),
    notification_id  uuid NOT NULL,
    channel          text NOT NULL,
    user_id          text NOT NULL,
    category         text NOT NULL,
    digest_key       text,
    due_at           timestamptz NOT NULL,
    request          bytea NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    claimed_until    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notification_id, channel)
);
CREATE INDEX idx_scheduled_due ON scheduled_notifications (due_at) WHERE status = 'pending' AND kind = 'deferred';
CREATE INDEX idx_scheduled_digest ON scheduled_notifications (digest_key) WHERE kind = 'digest';

-- One per (user, channel, category, frequency, period). Items are added only
-- while it is open (under a share lock); sealing takes the row lock, so an item
-- either made it in before the seal or goes to the next period's bucket.
CREATE TABLE digest_buckets (
    key            text PRIMARY KEY,
    user_id        text NOT NULL,
    channel        text NOT NULL,
    category       text NOT NULL,
    frequency      text NOT NULL,
    due_at         timestamptz NOT NULL,
    status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'sealed', 'sent')),
    digest_id      uuid NOT NULL,
    claimed_until  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz
);
CREATE INDEX idx_digest_buckets_due ON digest_buckets (due_at) WHERE status <> 'sent';

CREATE TABLE jobs (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL,
    status       text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    total        bigint NOT NULL DEFAULT 0,
    done         bigint NOT NULL DEFAULT 0,
    errors       jsonb NOT NULL DEFAULT '[]',
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
