-- Back to 012's CHECK: the events the pixel and the click redirect recorded are
-- deleted (a row they moved to 'delivered' keeps that status).
DELETE FROM engagement_events WHERE source IN ('pixel', 'link');
ALTER TABLE engagement_events DROP CONSTRAINT engagement_events_source_check;
ALTER TABLE engagement_events ADD CONSTRAINT engagement_events_source_check
    CHECK (source IN ('api', 'inbox', 'sendgrid', 'mailgun'));
