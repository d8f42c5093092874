"""The preference center's words in the languages it speaks, chosen by the
person's locale (``de-AT`` → ``de``; anything else → English). A key missing in
a language falls back to English, so a new string never shows as a key."""

from __future__ import annotations

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Your notification preferences", "always": "Always sent: these cannot be turned off.",
        "how_often": "How often", "quiet_hours": "Quiet hours", "from": "From", "to": "to",
        "timezone": "Time zone", "consent": "Consent", "agree": "I agree to messages by {channel} (untick to withdraw)",
        "stop_marketing": "Stop all marketing", "save": "Save", "saved": "Saved.", "nothing": "Nothing to change.",
        "stale": "Your preferences changed somewhere else since this page was opened. "
                 "Check your choices below and save again.",
        "quiet_both": "Quiet hours need both a start and an end.",
        "quiet_format": "Quiet hours need two times, like 22:00 and 07:00.",
        "bad_zone": "{zone!r} is not a time zone we know, like Europe/Berlin.", "not_saved": "Not saved: {reason}",
        "immediate": "immediately", "hourly": "hourly digest", "daily": "daily digest", "weekly": "weekly digest",
        "monthly": "monthly digest", "never": "never",
    },
    "de": {
        "title": "Deine Benachrichtigungen", "always": "Immer gesendet: diese lassen sich nicht abschalten.",
        "how_often": "Wie oft", "quiet_hours": "Ruhezeiten", "from": "Von", "to": "bis", "timezone": "Zeitzone",
        "consent": "Einwilligung", "agree": "Ich willige in Nachrichten per {channel} ein (Haken entfernen zum Widerruf)",
        "stop_marketing": "Keine Werbung mehr", "save": "Speichern", "saved": "Gespeichert.",
        "nothing": "Nichts zu ändern.",
        "stale": "Deine Einstellungen wurden an anderer Stelle geändert, seit diese Seite geöffnet wurde. "
                 "Prüfe deine Auswahl und speichere erneut.",
        "quiet_both": "Ruhezeiten brauchen Beginn und Ende.",
        "quiet_format": "Ruhezeiten brauchen zwei Uhrzeiten, etwa 22:00 und 07:00.",
        "bad_zone": "{zone!r} ist keine bekannte Zeitzone, etwa Europe/Berlin.",
        "not_saved": "Nicht gespeichert: {reason}",
        "immediate": "sofort", "hourly": "stündlich gesammelt", "daily": "täglich gesammelt",
        "weekly": "wöchentlich gesammelt", "monthly": "monatlich gesammelt", "never": "nie",
    },
    "es": {
        "title": "Tus preferencias de notificaciones", "always": "Siempre se envían: no se pueden desactivar.",
        "how_often": "Con qué frecuencia", "quiet_hours": "Horas de silencio", "from": "De", "to": "a",
        "timezone": "Zona horaria", "consent": "Consentimiento",
        "agree": "Acepto mensajes por {channel} (desmarca para retirarlo)",
        "stop_marketing": "No quiero más publicidad", "save": "Guardar", "saved": "Guardado.",
        "nothing": "No hay nada que cambiar.",
        "stale": "Tus preferencias cambiaron en otro lugar desde que abriste esta página. "
                 "Revisa tu elección y guarda de nuevo.",
        "quiet_both": "Las horas de silencio necesitan un inicio y un fin.",
        "quiet_format": "Las horas de silencio necesitan dos horas, como 22:00 y 07:00.",
        "bad_zone": "{zone!r} no es una zona horaria conocida, como Europe/Madrid.",
        "not_saved": "No se guardó: {reason}",
        "immediate": "al momento", "hourly": "resumen por hora", "daily": "resumen diario",
        "weekly": "resumen semanal", "monthly": "resumen mensual", "never": "nunca",
    },
}


def language(locale: str | None) -> str:
    """``de-AT`` → ``de`` when the center speaks it, else ``en``."""
    primary = (locale or "en").replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in TEXT else "en"


def words(locale: str | None) -> dict[str, str]:
    return {**TEXT["en"], **TEXT[language(locale)]}
