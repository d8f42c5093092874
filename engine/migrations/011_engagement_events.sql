-- Engagement: a notification opened or clicked on one of its channels, as a
-- client reports it (POST /v1/notifications/{id}/events) or as the in-app
-- inbox sees it (a message marked read). The first of each type per
-- (notification, channel) is kept; a repeated report inserts nothing.
-- delivery_tracking.status never becomes "opened": opening implies delivered,
-- so a "sent" row moves to "delivered" (reason "opened" or "clicked") and the
-- engagement itself lives here (engine/engagement.py).
CREATE TABLE engagement_events (
    id              bigserial PRIMARY KEY,
    notification_id uuid NOT NULL,
    user_id         text NOT NULL,
    channel         text NOT NULL,
    type            text NOT NULL CHECK (type IN ('opened', 'clicked')),
    at              timestamptz NOT NULL,          -- when it happened, as reported
    source          text NOT NULL CHECK (source IN ('api', 'inbox')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notification_id, channel, type)        -- idempotency; also the lookup index
);
