"""Credentials in provider settings: required, kept out of ``settings`` as
shown, and scrubbed from every error message."""

from __future__ import annotations

from providers.errors import ConfigurationError

REDACTED = "[redacted]"


def required_secret(settings: dict, key: str, kind: str, name: str) -> str:
    """``settings[key]`` as a non-empty string; ConfigurationError naming the key
    (never a value) otherwise."""
    value = settings.get(key)
    if not value or not isinstance(value, str):
        raise ConfigurationError(f"{kind} provider {name!r}: {key!r} is required")
    return value


def redacted(settings: dict, *keys: str) -> dict:
    """A copy of ``settings`` with the values of ``keys`` hidden."""
    return {k: (REDACTED if k in keys else v) for k, v in settings.items()}


def scrub(text: str, *secrets: str) -> str:
    """``text`` with every occurrence of each secret hidden."""
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    return text
