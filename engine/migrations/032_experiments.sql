-- A/B experiments (policy/experiments.py, engine/http/experiments.py): variants of
-- a category's content, template, timing or channels, split by a stable hash of
-- the user and the experiment. At most one experiment per category is live
-- (running, or stopped and routing everyone to its winner); an archived one is
-- kept for its results only.
CREATE TABLE experiments (
    experiment_id text PRIMARY KEY,
    description   text NOT NULL DEFAULT '',
    category      text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('content', 'template', 'timing', 'channel')),
    variants      jsonb NOT NULL,                -- [{name, weight, ...overrides}], the first is the control
    metric        text NOT NULL CHECK (metric IN ('delivered', 'opened', 'clicked', 'converted')),
    min_sample    integer NOT NULL,
    confidence    double precision NOT NULL,
    status        text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'stopped', 'archived')),
    winner        text,                          -- the variant everyone gets once stopped
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz,
    archived_at   timestamptz
);
CREATE UNIQUE INDEX idx_experiments_live_category ON experiments (category) WHERE status <> 'archived';

-- Who got which variant: one row per notification an experiment routed (its
-- outcomes and engagement are found by notification id), written by the UserShard
-- before the notification is sent. A notification decided again (a redelivery)
-- gets the variant its row names, whatever the experiment's state is now: it must
-- not go out on other channels the second time. ``counted``: a running
-- experiment's row for a known user (what the results count); routing to a
-- stopped experiment's winner is recorded too, uncounted. The seeds' table had one
-- row per user; per notification is what ties a variant to the outcome it had.
CREATE TABLE user_experiment_participation (
    notification_id uuid PRIMARY KEY,
    experiment_id   text NOT NULL REFERENCES experiments (experiment_id) ON DELETE CASCADE,
    user_id         text NOT NULL,
    variant         text NOT NULL,
    counted         boolean NOT NULL,
    assigned_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_user_experiment_participation_experiment ON user_experiment_participation (experiment_id)
    WHERE counted;
CREATE INDEX idx_user_experiment_participation_user ON user_experiment_participation (user_id);
CREATE INDEX idx_user_experiment_participation_assigned ON user_experiment_participation (assigned_at);

-- A conversion is reported like an open or a click (POST /v1/notifications/{id}/events,
-- "type": "converted"): what an experiment's "converted" metric counts.
ALTER TABLE engagement_events DROP CONSTRAINT engagement_events_type_check;
ALTER TABLE engagement_events ADD CONSTRAINT engagement_events_type_check
    CHECK (type IN ('opened', 'clicked', 'converted'));
