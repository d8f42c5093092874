-- Events a subscription never saw: the events stream (a log with limits) dropped
-- them before its consumer read them (actors/event_sender.py counts the gaps).
ALTER TABLE event_subscriptions ADD COLUMN lost_events bigint NOT NULL DEFAULT 0;
