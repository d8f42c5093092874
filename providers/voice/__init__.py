"""Voice providers: a phone call that reads the notification aloud
(``providers.voice.twilio``)."""
