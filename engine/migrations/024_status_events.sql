-- Outbound status events (issue 14; docs/design.md, "Status events").
--
-- status_events is a transactional outbox: triggers add a row in the same
-- transaction as every status a notification's channel takes (a tracking row
-- inserted or its status changed, an engagement event stored), whichever code
-- wrote it. The EventSender actor publishes the rows to NATS
-- (<prefix>.events.<channel>.<status>, Nats-Msg-Id = the row's id, so a row
-- published twice is stored once) and then deletes them: nothing committed is
-- missed, and nothing is published that was not committed.
CREATE TABLE status_events (
    seq             bigserial PRIMARY KEY,
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    notification_id uuid NOT NULL,
    user_id         text NOT NULL,
    channel         text NOT NULL,
    category        text NOT NULL,
    status          text NOT NULL,
    reason          text,
    provider        text,
    parent_id       uuid,
    at              timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Statement triggers with transition tables: one INSERT … SELECT per statement,
-- so a COPY of 5,000 tracking rows adds one statement, not 5,000 calls.
CREATE FUNCTION status_events_tracking_inserted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO status_events (notification_id, user_id, channel, category, status, reason, provider, parent_id)
    SELECT notification_id, user_id, channel, category, status, reason, provider, parent_id FROM new_rows;
    IF FOUND THEN  -- NOTIFY takes a cluster-wide lock at commit: only when an event was written
        PERFORM pg_notify('tidings_status_events', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION status_events_tracking_updated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO status_events (notification_id, user_id, channel, category, status, reason, provider, parent_id)
    SELECT n.notification_id, n.user_id, n.channel, n.category, n.status, n.reason, n.provider, n.parent_id
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status IS DISTINCT FROM o.status;
    IF FOUND THEN  -- NOTIFY takes a cluster-wide lock at commit: only when an event was written
        PERFORM pg_notify('tidings_status_events', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION status_events_engaged() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO status_events (notification_id, user_id, channel, category, status, reason, provider, parent_id)
    SELECT e.notification_id, e.user_id, e.channel, coalesce(d.category, ''), e.type, e.source, d.provider,
           d.parent_id
    FROM new_rows e LEFT JOIN delivery_tracking d
        ON d.notification_id = e.notification_id AND d.channel = e.channel;
    IF FOUND THEN  -- NOTIFY takes a cluster-wide lock at commit: only when an event was written
        PERFORM pg_notify('tidings_status_events', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER status_events_inserted AFTER INSERT ON delivery_tracking
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION status_events_tracking_inserted();
CREATE TRIGGER status_events_updated AFTER UPDATE ON delivery_tracking
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION status_events_tracking_updated();
CREATE TRIGGER status_events_engaged AFTER INSERT ON engagement_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION status_events_engaged();

-- Webhook subscriptions to those events (/v1/event-subscriptions). The signing
-- secret is sealed under a master key (privacy.master_keys), bound to the id.
CREATE TABLE event_subscriptions (
    id          uuid PRIMARY KEY,
    url         text NOT NULL,
    description text NOT NULL DEFAULT '',
    channels    text[] NOT NULL DEFAULT '{}',   -- empty: every channel
    statuses    text[] NOT NULL DEFAULT '{}',   -- empty: every status
    categories  text[] NOT NULL DEFAULT '{}',   -- empty: every category
    enabled     boolean NOT NULL DEFAULT true,
    master_id   text NOT NULL,
    secret      bytea NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Events a subscription's URL did not take after every attempt: its dead letters.
CREATE TABLE event_dead_letters (
    subscription_id uuid NOT NULL REFERENCES event_subscriptions (id) ON DELETE CASCADE,
    event_id        uuid NOT NULL,
    event           jsonb NOT NULL,
    attempts        integer NOT NULL,
    last_error      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, event_id)
);
CREATE INDEX idx_event_dead_letters_created ON event_dead_letters (subscription_id, created_at);
