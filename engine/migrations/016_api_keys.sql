-- API keys: only a hash of the secret is kept; the key itself is shown once.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,               -- public part of the key: tdk_<id>_<secret>
    name        text NOT NULL,
    hash        bytea NOT NULL,                 -- sha256 of the secret part
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    rotated_to  text,                           -- the key that replaced it (rotate)
    owner       text NOT NULL                   -- the first key of its rotation chain: what
                                                -- idempotency keys are scoped to, so a retry
                                                -- across a rotation is still the same notification
);
CREATE INDEX api_keys_active ON api_keys (id) WHERE revoked_at IS NULL;

-- Signing keys of end-user tokens (HS256, by kid). The newest active one signs;
-- every key not retired verifies, so a rotation invalidates nothing in flight.
CREATE TABLE token_keys (
    kid         text PRIMARY KEY,
    secret      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
