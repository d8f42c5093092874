-- The running generation of a deployment's actors (engine/deployment.py): the
-- first engine instance writes it, every other instance joins the actors it names,
-- and the last to leave deletes it. One row per stream (a deployment is a schema
-- and a stream).
CREATE TABLE engine_deployment (
    stream text PRIMARY KEY,
    generation text NOT NULL,       -- the token in the actors' names
    actors jsonb NOT NULL,          -- their names, by role (engine/runtime.py Layout)
    shared_ray boolean NOT NULL,    -- the first instance joined a Ray cluster (ray.address), not one of its own
    fingerprint text NOT NULL,      -- the engine's version and the configuration the actors were made with
    started_at timestamptz NOT NULL DEFAULT now()
);

-- Every running instance, renewed by its supervisor (engine/deployment.py, Claim):
-- who was there a moment ago, when PostgreSQL restarted and no one holds a lock yet.
CREATE TABLE engine_members (
    instance uuid PRIMARY KEY,
    stream text NOT NULL,
    generation text NOT NULL,
    backend_pid integer NOT NULL,            -- its session's, and the server's start, when last seen:
    server_started timestamptz NOT NULL,     -- gone with its session, unless the server restarted since
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX engine_members_stream ON engine_members (stream);
