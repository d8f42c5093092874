-- Message templates: one row per (template, channel, locale, version); the
-- newest version is used unless a request pins one. Locale 'default' is the
-- fallback of every locale.
CREATE TABLE message_templates (
    id          text NOT NULL,
    channel     text NOT NULL,
    locale      text NOT NULL DEFAULT 'default',
    version     integer NOT NULL,
    subject     text,
    text        text,
    html        text,
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, channel, locale, version)
);
