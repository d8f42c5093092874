"""Provider types by name, so configuration can say ``type: smtp``.

Modules are imported only when a provider of that type is created, so an engine
that sends no email never imports aiosmtplib.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from providers.base import Provider
from providers.errors import ConfigurationError

PROVIDER_TYPES: dict[str, str] = {
    "sendgrid": "providers.email.sendgrid:SendGridProvider",
    "smtp": "providers.email.smtp:SmtpProvider",
    "webhook": "providers.webhook.http:WebhookProvider",
    "webpush": "providers.webpush.provider:WebPushProvider",
    "twilio_sms": "providers.sms.twilio:TwilioSmsProvider",
    "messagebird": "providers.sms.messagebird:MessageBirdProvider",
    "vonage": "providers.sms.vonage:VonageSmsProvider",
    "sns": "providers.sms.sns:SnsSmsProvider",
    "ses": "providers.email.ses:SesEmailProvider",
    "twilio_voice": "providers.voice.twilio:TwilioVoiceProvider",
    "mailgun": "providers.email.mailgun:MailgunProvider",
    "inapp": "providers.inapp.provider:InAppProvider",
    "fcm": "providers.push.fcm:FcmProvider",
    "apns": "providers.push.apns:ApnsProvider",
}


def register(type_name: str, target: str) -> None:
    """Make ``type_name`` create instances of ``target`` ("package.module:Class").
    Replaces an existing registration of the same name. Raises ValueError when
    ``target`` is not of that form (nothing is imported yet)."""
    module, sep, cls = target.partition(":")
    if not type_name or not sep or not module or not cls:
        raise ValueError(f"provider target must look like 'package.module:Class', got {target!r}")
    PROVIDER_TYPES[type_name] = target


def resolve(type_name: str) -> Any:
    """The class registered for ``type_name``; ConfigurationError if the name is
    unknown or its module/class cannot be imported."""
    target = PROVIDER_TYPES.get(type_name)
    if target is None:
        known = ", ".join(sorted(PROVIDER_TYPES))
        raise ConfigurationError(f"unknown provider type {type_name!r}; known types: {known}")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, cls_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"provider type {type_name!r}: cannot load {target}: {exc}") from exc


def from_env(settings: dict, environ=None) -> dict:
    """``settings`` with every value ``"env:NAME"`` replaced by the environment
    variable NAME, so credentials stay out of config files. ConfigurationError
    names a variable that is not set (never its value), and a ``"secret:NAME"``
    value still there (the engine fills those in before providers are made)."""
    environ = os.environ if environ is None else environ
    out = {}
    for key, value in settings.items():
        if isinstance(value, str) and value.startswith("env:"):
            var = value[4:]
            if var not in environ:
                raise ConfigurationError(f"setting {key!r}: environment variable {var} is not set")
            value = environ[var]
        elif isinstance(value, str) and value.startswith("secret:"):
            # Filled from PostgreSQL when the engine starts (engine/credentials.py);
            # never hand the reference itself to a provider as if it were the secret.
            raise ConfigurationError(f"setting {key!r}: {value} was not filled from the stored credentials")
        out[key] = value
    return out


def create(type_name: str, name: str, settings: dict) -> Provider:
    """A new, not yet started provider: ``cls(name, settings)`` for the class
    registered as ``type_name``, ``env:NAME`` values read from the environment.
    Raises ConfigurationError for an unknown type (naming the known ones) and
    whatever the constructor raises for bad settings (ConfigurationError by
    convention)."""
    return resolve(type_name)(name, from_env(settings))


__all__ = ["PROVIDER_TYPES", "create", "from_env", "register", "resolve"]
