DROP TABLE event_dead_letters;
DROP TABLE event_subscriptions;
DROP TRIGGER status_events_engaged ON engagement_events;
DROP TRIGGER status_events_updated ON delivery_tracking;
DROP TRIGGER status_events_inserted ON delivery_tracking;
DROP FUNCTION status_events_engaged();
DROP FUNCTION status_events_tracking_updated();
DROP FUNCTION status_events_tracking_inserted();
DROP TABLE status_events;
