ALTER TABLE event_subscriptions DROP COLUMN lost_events;
