DROP TABLE IF EXISTS engagement_events;
