-- Provider tracking webhooks (engine/http_tracking.py) store the opens and
-- clicks SendGrid and Mailgun report as engagement events, with the provider
-- type as their source. The CHECK from 011 is replaced under its generated
-- name, with those two added.
ALTER TABLE engagement_events DROP CONSTRAINT engagement_events_source_check;
ALTER TABLE engagement_events ADD CONSTRAINT engagement_events_source_check
    CHECK (source IN ('api', 'inbox', 'sendgrid', 'mailgun'));
