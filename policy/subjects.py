"""A user id as one NATS subject token (``<prefix>.prefs.changed.<user>``,
``<prefix>.inbox.<user>``): the id itself when it is a plain token (letters,
digits, ``_``, ``-``), else ``~`` and its unpadded base64url form, so ids with
dots, spaces or wildcards cannot change a subject's meaning."""

from __future__ import annotations

import base64
import re

_PLAIN = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")


def user_token(user_id: str) -> str:
    if _PLAIN.match(user_id):
        return user_id
    return "~" + base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")


def token_user(token: str) -> str:
    """The user id of a token; ValueError (binascii.Error, UnicodeDecodeError) for a bad one."""
    if not token.startswith("~"):
        return token
    raw = token[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
