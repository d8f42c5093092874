"""Signed JSON webhooks over HTTP with aiohttp.

Settings:

- ``secret`` (required): HMAC key for ``providers.webhook.signing``.
- ``url``: default target; a task address starting with ``http://`` or
  ``https://`` overrides it per user.
- ``timeout_s`` (10, connecting), ``max_connections`` (100, pool size). The whole
  call is bounded by the ChannelShard (``timeout_s`` of the provider's config), so
  no second per-request timer is armed here: on the hot path it cost ~10% of the CPU.
- ``tolerate_statuses`` ([]): non-2xx statuses that count as accepted, e.g. 409
  from a receiver that reports a duplicate delivery id as a conflict.
"""

from __future__ import annotations

import time

import aiohttp
import msgspec

from policy.types import DeliveryTask
from providers.base import Receipt
from providers.errors import ConfigurationError, InvalidMessage, NetworkError
from providers.http_errors import map_status
from providers.http_session import USER_AGENT, HttpSession
from providers.secrets import redacted
from providers.webhook.signing import ID_HEADER, SIGNATURE_HEADER, delivery_id, sign

_encoder = msgspec.json.Encoder()


def _is_url(value: str | None) -> bool:
    return bool(value) and value.startswith(("http://", "https://"))  # type: ignore[union-attr]


class WebhookProvider(HttpSession):
    """Provider for ``channel = "webhook"``; see the module docstring for settings.

    ``send`` POSTs one signed JSON document and returns
    ``Receipt(message_id=<X-Message-Id response header or None>)`` on 2xx (or a
    tolerated status); otherwise raises a ``providers.errors.DeliveryError``. It
    never retries. ``start`` opens the HTTP session, ``close`` releases it.
    """

    channel = "webhook"

    def __init__(self, name: str, settings: dict):
        self.name = name
        self.settings = redacted(settings, "secret")
        secret = settings.get("secret")
        if not secret:
            raise ConfigurationError(f"webhook provider {name!r}: 'secret' is required")
        self.secret: bytes = secret.encode() if isinstance(secret, str) else bytes(secret)
        self.url: str | None = settings.get("url")
        if self.url is not None and not _is_url(self.url):
            raise ConfigurationError(f"webhook provider {name!r}: url must start with http:// or https://")
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 100))
        self.tolerate = frozenset(int(s) for s in settings.get("tolerate_statuses", ()))
        self._session: aiohttp.ClientSession | None = None

    def target(self, task: DeliveryTask) -> str:
        """Where ``task`` goes: its address if that is a URL, else the ``url``
        setting; InvalidMessage when there is neither."""
        if _is_url(task.address):
            return task.address
        if self.url:
            return self.url
        raise InvalidMessage(f"webhook task address {task.address!r} is not a URL and no default url is set")

    def body(self, task: DeliveryTask) -> bytes:
        """The JSON document POSTed for ``task``."""
        c = task.content
        doc = {
            "id": task.notification_id,
            "user_id": task.user_id,
            "category": task.category,
            "channel": task.channel,
            "priority": task.priority,
            "content": {"subject": c.subject, "text": c.text, "html": c.html, "data": c.data},
            "metadata": task.metadata,
            "accepted_at": task.accepted_at,
        }
        try:
            return _encoder.encode(doc)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidMessage(f"webhook content is not JSON-encodable: {exc}") from exc

    async def send(self, task: DeliveryTask) -> Receipt:
        """Deliver ``task``; see the class docstring."""
        url = self.target(task)
        body = self.body(task)
        session = await self.session()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            ID_HEADER: delivery_id(task.notification_id, task.channel),
        }
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                # Reading the body to the end returns the connection to the pool
                # for keep-alive; the context manager releases it either way.
                payload = await resp.read()
                status = resp.status
                if 200 <= status < 300 or status in self.tolerate:
                    return Receipt(message_id=resp.headers.get("X-Message-Id"))
                snippet = payload[:200].decode("utf-8", "replace").strip()
                raise map_status(status, resp.headers, snippet)
        except aiohttp.InvalidURL as exc:
            raise InvalidMessage(f"invalid webhook url {url!r}: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(f"webhook {url}: {type(exc).__name__}: {exc}") from exc


__all__ = ["USER_AGENT", "WebhookProvider"]
