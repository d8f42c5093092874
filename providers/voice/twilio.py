"""Voice calls through Twilio's Programmable Voice API:
``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Calls.json`` with inline
TwiML that reads the notification aloud::

    <Response><Say language="de-DE" voice="alice">Ihr Paket ist da.</Say></Response>

Settings: those of ``providers.twilio_api`` (``account_sid``, ``auth_token`` or
``api_key_sid``/``api_key_secret``, ``base_url``, ``timeout_s``,
``max_connections``, ``status_callback``), and:

- ``from`` (required): the caller ID, an E.164 number.
- ``voice`` ("alice"): the ``<Say>`` voice. alice speaks the 26 locales in
  ``ALICE_LANGUAGES``; an Amazon Polly voice ("Polly.Joanna") speaks one
  language, so pair it with ``voices``/``languages``.
- ``voices`` ({}): Twilio language -> voice, e.g. ``{"de-DE": "Polly.Marlene"}``;
  a language not in it gets ``voice``.
- ``languages`` ({}): user locale (or bare language) -> Twilio language, e.g.
  ``{"en": "en-GB", "pt": "pt-PT"}``; consulted before the built-in mapping.
- ``default_language`` ("en-US"): for a locale nothing maps.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

from policy.types import DeliveryTask
from providers.base import Receipt
from providers.errors import ConfigurationError, InvalidMessage
from providers.sms import e164, message_text
from providers.twilio_api import TwilioApi

# Twilio refuses a Twiml parameter over 4,000 characters (error 32018).
MAX_TWIML_CHARS = 4000
DEFAULT_VOICE = "alice"
DEFAULT_LANGUAGE = "en-US"
# The language values <Say voice="alice"> accepts (Twilio's TwiML <Say> reference).
ALICE_LANGUAGES = frozenset({
    "da-DK", "de-DE", "en-AU", "en-CA", "en-GB", "en-IN", "en-US", "ca-ES", "es-ES", "es-MX", "fi-FI", "fr-CA",
    "fr-FR", "it-IT", "ja-JP", "ko-KR", "nb-NO", "nl-NL", "pl-PL", "pt-BR", "pt-PT", "ru-RU", "sv-SE", "zh-CN",
    "zh-HK", "zh-TW",
})
# A bare language (the profile default is "en") -> the locale most speakers of it
# expect; Norwegian Bokmål is "nb" in Twilio, whatever the profile says.
LANGUAGE_DEFAULTS = {
    "ca": "ca-ES", "da": "da-DK", "de": "de-DE", "en": "en-US", "es": "es-ES", "fi": "fi-FI", "fr": "fr-FR",
    "it": "it-IT", "ja": "ja-JP", "ko": "ko-KR", "nb": "nb-NO", "nl": "nl-NL", "nn": "nb-NO", "no": "nb-NO",
    "pl": "pl-PL", "pt": "pt-BR", "ru": "ru-RU", "sv": "sv-SE", "zh": "zh-CN",
}
_SCRIPTS = {"hans": "CN", "hant": "TW"}  # zh-Hans / zh-Hant without a region
# Characters XML 1.0 cannot carry even escaped (most C0 controls, lone
# surrogates, U+FFFE/U+FFFF): dropped, or Twilio could not parse the TwiML.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _tag_key(tag: str) -> str:
    return tag.strip().replace("_", "-").lower()


def twilio_language(locale: str, overrides: dict[str, str] | None = None, default: str = DEFAULT_LANGUAGE) -> str:
    """The ``<Say language>`` for a user's ``locale`` (BCP 47 or POSIX style):
    ``overrides`` (keys matched case-insensitively, full tag first, then the bare
    language), then the locale itself when alice speaks it (``de-AT`` is not,
    ``fr-CA`` is), then ``LANGUAGE_DEFAULTS`` for its language, else ``default``."""
    overrides = overrides or {}
    key = _tag_key(locale or "")
    subtags = [s for s in key.split("-") if s]
    lang = subtags[0] if subtags else ""
    for candidate in (key, lang):
        if candidate and candidate in overrides:
            return overrides[candidate]
    region = next((s.upper() for s in reversed(subtags[1:]) if len(s) == 2 and s.isalpha()), None)
    if region is None:
        region = next((_SCRIPTS[s] for s in subtags[1:] if s in _SCRIPTS), None)
    if region and f"{lang}-{region}" in ALICE_LANGUAGES:
        return f"{lang}-{region}"
    return LANGUAGE_DEFAULTS.get(lang, default)


def twiml(text: str, language: str, voice: str) -> str:
    """``<Response><Say language=... voice=...>text</Say></Response>`` with the
    text XML-escaped (and characters XML cannot carry dropped) and the
    attributes quoted, so no text can add or break TwiML verbs."""
    body = escape(_NOT_XML.sub("", text))
    return f"<Response><Say language={quoteattr(language)} voice={quoteattr(voice)}>{body}</Say></Response>"


def _str_map(value: object, what: str, name: str, key=lambda k: k) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                              for k, v in value.items()):
        raise ConfigurationError(f"twilio_voice provider {name!r}: {what} must map strings to non-empty strings")
    return {key(k): v for k, v in value.items()}


class TwilioVoiceProvider(TwilioApi):
    """Provider for ``channel = "voice"``; see the module docstring for settings.

    ``send`` calls ``task.address`` (E.164) from ``from`` and has Twilio say the
    content's text (else its subject) in the language for ``task.locale``;
    InvalidMessage without a request for a bad number, nothing to say, or TwiML
    over 4,000 characters. Returns ``Receipt(message_id=<CA call sid>)`` on 201:
    the call is queued, not yet answered. Errors are mapped by
    ``providers.twilio_api.twilio_error``. It never retries.
    """

    channel = "voice"
    kind = "twilio_voice"

    def __init__(self, name: str, settings: dict):
        self._init_api(name, settings)
        try:
            self.from_ = e164.normalize(settings.get("from"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigurationError(f"twilio_voice provider {name!r}: 'from' must be the caller ID as an E.164 "
                                     f"number: {exc}") from exc
        voice = settings.get("voice", DEFAULT_VOICE)
        if not isinstance(voice, str) or not voice:
            raise ConfigurationError(f"twilio_voice provider {name!r}: voice must be a non-empty string")
        self.voice = voice
        self.voices = _str_map(settings.get("voices"), "voices", name)
        self.languages = _str_map(settings.get("languages"), "languages", name, key=_tag_key)
        default = settings.get("default_language", DEFAULT_LANGUAGE)
        if not isinstance(default, str) or not default:
            raise ConfigurationError(f"twilio_voice provider {name!r}: default_language must be a non-empty string")
        self.default_language = default

    def language(self, locale: str) -> str:
        """The Twilio language for a user's locale (see ``twilio_language``)."""
        return twilio_language(locale, self.languages, self.default_language)

    def form(self, task: DeliveryTask) -> dict[str, str]:
        """The Calls.json form for ``task`` (validated; InvalidMessage)."""
        try:
            to = e164.normalize(task.address)
        except ValueError as exc:
            raise InvalidMessage(f"voice recipient: {exc}") from exc
        text = message_text(task)
        if not _NOT_XML.sub("", text).strip():
            raise InvalidMessage("voice call needs text (or a subject) to say: only control characters")
        language = self.language(task.locale)
        doc = twiml(text, language, self.voices.get(language, self.voice))
        if len(doc) > MAX_TWIML_CHARS:
            raise InvalidMessage(f"voice TwiML is {len(doc)} characters, Twilio takes at most {MAX_TWIML_CHARS}")
        form = {"To": to, "From": self.from_, "Twiml": doc}
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        return form

    async def send(self, task: DeliveryTask) -> Receipt:
        """Place one call for ``task``; see the class docstring."""
        return await self._create("Calls", self.form(task))


__all__ = ["ALICE_LANGUAGES", "LANGUAGE_DEFAULTS", "MAX_TWIML_CHARS", "TwilioVoiceProvider", "twilio_language",
           "twiml"]
