-- Topics: who follows what ("company-42"); a broadcast to a topic reaches its
-- subscribers. shard_key = stable_hash(user_id), as users.shard_key: a UserShard
-- reads its own subscribers of a topic (topic_id, then shard_key % N = index).
CREATE TABLE topic_subscribers (
    topic_id      text NOT NULL,
    user_id       text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    shard_key     bigint NOT NULL,
    subscribed_at timestamptz NOT NULL DEFAULT now(),
    source        text NOT NULL DEFAULT 'api',
    PRIMARY KEY (topic_id, user_id)
);
CREATE INDEX idx_topic_subscribers_user ON topic_subscribers (user_id);

-- Segments: saved audience filters (policy/segments.py), evaluated by the shards.
CREATE TABLE segments (
    segment_id  text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    filter      jsonb NOT NULL,
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A segment on engagement reads each user's last open and click.
-- IF NOT EXISTS: on a large table an operator may build it CONCURRENTLY first (docs/design.md)
CREATE INDEX IF NOT EXISTS idx_engagement_events_user_type ON engagement_events (user_id, type, at);
