-- Several devices per user (policy/devices.py): push tokens (APNs, FCM) and web push
-- subscriptions, each sealed under the user's key (as user_addresses), with a blind
-- index of the token (a token is one device's, whoever registers it again).
CREATE TABLE user_devices (
    user_id      text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    device_id    text NOT NULL,
    service      text NOT NULL CHECK (service IN ('apns', 'fcm', 'webpush')),
    platform     text NOT NULL DEFAULT 'other',
    app          text NOT NULL DEFAULT '',
    kind         text NOT NULL DEFAULT 'mobile',
    sealed       bytea NOT NULL,
    blind        bytea NOT NULL,
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id)
);
-- one device per token: a token registered again moves (stores/devices.py, under an advisory lock)
CREATE UNIQUE INDEX idx_user_devices_blind ON user_devices (service, blind);
