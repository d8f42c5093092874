-- The in-app inbox (providers/inapp, engine/http_inbox.py). ``seq`` is global and
-- is the cursor a client reads with (``?after=<seq>``): for one user, rows are
-- inserted under a per-user lock (pg_advisory_xact_lock held until commit), so a
-- user's rows become visible in ``seq`` order and "everything after N" never
-- misses a row that commits later with a smaller seq. (This also needs the
-- sequence's CACHE to stay 1, its default: cached ranges per session would hand
-- out seqs out of time order.)
-- A redelivered send inserts nothing (UNIQUE notification_id).
CREATE TABLE inbox_messages (
    seq             bigserial PRIMARY KEY,
    user_id         text NOT NULL,
    notification_id uuid NOT NULL UNIQUE,
    category        text NOT NULL,
    title           text,
    body            text,
    data            jsonb NOT NULL DEFAULT '{}',
    priority        text NOT NULL DEFAULT 'normal',
    created_at      timestamptz NOT NULL DEFAULT now(),
    seen_at         timestamptz,
    read_at         timestamptz
);
CREATE INDEX idx_inbox_messages_user_seq ON inbox_messages (user_id, seq);
-- Unread listings and badge counts.
CREATE INDEX idx_inbox_messages_unread ON inbox_messages (user_id, seq) WHERE read_at IS NULL;
