"""Bounce addresses and Message-IDs that name their notification (VERP).

Mail the SMTP provider sends with a ``bounce_domain`` and ``bounce_secret`` goes
out with the envelope sender ``bounce+<token>@<bounce_domain>`` and the
Message-ID ``<<token>@<message_id_domain>>``, where the token is the
notification id (32 hex digits) and a MAC of it under the secret (16 base32
characters). A delivery report (RFC 3464) comes back to the envelope sender; a
feedback-loop complaint (RFC 5965) quotes the original's headers, Message-ID
among them. Either way the token finds the notification, and its MAC proves the
report comes from someone who received that mail: nobody else can name a
notification, so nobody else can bounce an address (``engine/bounces.py``).

Lower case throughout: some MTAs change the case of a local part.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid

LOCAL_PREFIX = "bounce"
MAC_BYTES = 10  # 80 bits, 16 base32 characters
TOKEN = re.compile(r"([0-9a-f]{32})\.([a-z2-7]{16})", re.IGNORECASE | re.ASCII)
MAX_CANDIDATES = 4  # tokens tried per text: a real one has one
MIN_SECRET = 16


def _mac(secret: bytes, hex_id: str) -> str:
    digest = hmac.new(secret, b"tidings-verp\x00" + hex_id.encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return base64.b32encode(digest).decode().lower()


def token(secret: bytes, notification_id: str) -> str | None:
    """The token of ``notification_id``; None when it is not a UUID (every
    notification the engine accepts has one)."""
    try:
        hex_id = uuid.UUID(notification_id).hex
    except (ValueError, TypeError, AttributeError):
        return None
    return f"{hex_id}.{_mac(secret, hex_id)}"


def return_path(tok: str, domain: str) -> str:
    return f"{LOCAL_PREFIX}+{tok}@{domain}"


def message_id(tok: str, domain: str) -> str:
    return f"<{tok}@{domain}>"


def notification_of(texts: list[str], secrets: list[bytes]) -> str | None:
    """The notification id of the first token in ``texts`` whose MAC one of
    ``secrets`` made; None when no text has one."""
    for text in texts:
        for n, m in enumerate(TOKEN.finditer(str(text or "")[:998])):
            if n >= MAX_CANDIDATES:
                break
            hex_id, mac = m.group(1).lower(), m.group(2).lower()
            if any(hmac.compare_digest(mac, _mac(s, hex_id)) for s in secrets):
                return str(uuid.UUID(hex_id))
    return None


def domain_of(address: str) -> str:
    """The domain of ``local@domain``, lower case ("" without one)."""
    _, at, domain = address.rpartition("@")
    return domain.strip().rstrip(">").lower() if at else ""


__all__ = ["domain_of", "message_id", "notification_of", "return_path", "token"]
