-- Our own open pixel and click redirect (engine/http_links.py) store opens and
-- clicks as engagement events with source 'pixel' and 'link'. The CHECK from
-- 012 is replaced under its generated name, with those two added.
ALTER TABLE engagement_events DROP CONSTRAINT engagement_events_source_check;
ALTER TABLE engagement_events ADD CONSTRAINT engagement_events_source_check
    CHECK (source IN ('api', 'inbox', 'sendgrid', 'mailgun', 'pixel', 'link'));
