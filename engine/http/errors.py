"""Turning msgspec's validation messages into (field path, reason) pairs for API answers."""

from __future__ import annotations

import re

import msgspec

_AT = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")
_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]+)`")


def field_error(e: msgspec.ValidationError | str, root: str = "$") -> dict:
    """``{"field": "$.channels[0]", "reason": "…"}`` from a msgspec error."""
    m = _AT.match(str(e))
    reason, path = m.group("reason"), m.group("path") or "$"
    named = _MISSING.search(reason) or _UNKNOWN.search(reason)
    if named:
        path = f"{path}.{named.group('name')}"
    if root != "$":
        path = root + path[1:]
    return {"field": path, "reason": reason}
