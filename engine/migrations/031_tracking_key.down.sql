CREATE INDEX IF NOT EXISTS idx_delivery_tracking_status ON delivery_tracking (status);
CREATE INDEX IF NOT EXISTS idx_user_preferences_active ON user_preferences (is_active) WHERE is_active;
ALTER TABLE delivery_tracking REPLICA IDENTITY DEFAULT;
ALTER TABLE delivery_tracking ADD PRIMARY KEY (id);
-- 024's trigger function is kept as 031 made it: it pairs rows by (notification_id, channel).
