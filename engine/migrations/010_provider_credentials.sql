-- Provider credentials kept in PostgreSQL, encrypted (engine/credentials.py):
-- ``ciphertext`` is a Fernet token (AES-128-CBC + HMAC-SHA256) over the name and
-- the value together, so a row copied under another name does not decrypt.
-- ``key_id`` is a fingerprint of the key that encrypted it (not the key), so
-- `tidings credentials list` shows which rows still need `rotate`.
-- The plaintext is never stored.
CREATE TABLE provider_credentials (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,200}$'),
    ciphertext  bytea NOT NULL,
    key_id      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
