-- Back to 011's CHECK: the events providers reported are deleted (their opens
-- and clicks stay on the delivery timeline; a row they moved to 'delivered'
-- keeps that status).
DELETE FROM engagement_events WHERE source NOT IN ('api', 'inbox');
ALTER TABLE engagement_events DROP CONSTRAINT engagement_events_source_check;
ALTER TABLE engagement_events ADD CONSTRAINT engagement_events_source_check CHECK (source IN ('api', 'inbox'));
