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

A URL in the task address is user input and goes through the SSRF guard
(``providers.egress``); the ``url`` setting is the operator's own config and is
trusted: it is requested exactly as before, may point at a private address, and
its failures count against the provider's shared breaker. For user URLs:

- ``egress_allow`` ([]): CIDRs a user URL may resolve to although they are
  internal, e.g. ``["127.0.0.0/8", "::1/128"]`` for loopback receivers in
  development and tests; production leaves it empty. Any other private,
  loopback, link-local, multicast, reserved... address is refused
  (``DestinationRefused``, reason ``destination_refused``), as are schemes
  other than http(s) and URLs with user info. Redirects are not followed, at
  most ``providers.egress.MAX_READ`` bytes of an answer are read, and error
  texts carry the status, never the answer's body.
- ``destination_timeout_s`` (0.8 × this ``timeout_s`` setting, else 8): the whole
  request to a user URL. Set the ChannelShard's per-call ``timeout_s`` (the
  provider's own, outside ``settings``) above it, so a slow user URL ends as that
  destination's failure, not as a timeout of the provider (which counts against
  the shared breaker). A timed-out POST may well have been received, and it is
  retried (``DestinationError`` is retryable): a slow receiver can get the same
  delivery more than once and must dedupe on the ``Tidings-Delivery-Id`` header
  (the same value on every copy).
- ``destination_breaker_failures`` (5), ``destination_breaker_cooloff_s`` (30):
  timeouts, connection errors, 408, 429 and 5xx from a user URL raise
  ``DestinationError`` (reason ``destination_error``, retried, never opening the
  shared breaker) and count against that destination (``scheme://host:port``);
  after that many in a row it is refused with ``DestinationCircuitOpen`` for
  the cool-off, then one probe goes through. At most
  ``destination_breakers_max`` (10000) failing destinations are remembered.
"""

from __future__ import annotations

import time

import aiohttp
import msgspec

from policy.types import DeliveryTask
from providers.base import Receipt
from providers.egress import Destination, check_url, guarded_session, read_capped, user_destinations
from providers.errors import ConfigurationError, DeliveryError, DestinationError, InvalidMessage, NetworkError
from providers.http_errors import map_status, parse_retry_after
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
        users = user_destinations(settings, self.timeout_s, f"webhook provider {name!r}")
        self.egress, self.destination_timeout_s, self.destinations = users.egress, users.timeout_s, users.breakers
        self._session: aiohttp.ClientSession | None = None
        self._guarded: aiohttp.ClientSession | None = None

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
        if _is_url(task.address):
            return await self._send_to_user_url(task, task.address)
        url = self.target(task)
        body = self.body(task)
        session = await self.session()
        try:
            async with session.post(url, data=body, headers=self._headers(task, body), allow_redirects=False) as resp:
                # Up to the cap, which a normal answer is under: then the
                # connection goes back to the pool for keep-alive; the context
                # manager releases it either way.
                payload = await read_capped(resp)
                status = resp.status
                if 200 <= status < 300 or status in self.tolerate:
                    return Receipt(message_id=resp.headers.get("X-Message-Id"))
                snippet = payload[:200].decode("utf-8", "replace").strip()
                raise map_status(status, resp.headers, snippet)
        except aiohttp.InvalidURL as exc:
            raise InvalidMessage(f"invalid webhook url {url!r}: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(f"webhook {url}: {type(exc).__name__}: {exc}") from exc

    def _headers(self, task: DeliveryTask, body: bytes) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            ID_HEADER: delivery_id(task.notification_id, task.channel),
        }

    async def _guarded_session(self) -> aiohttp.ClientSession:
        if self._guarded is None or self._guarded.closed:
            self._guarded = guarded_session(
                self.egress, max_connections=self.max_connections, connect_timeout_s=self.timeout_s,
                total_timeout_s=self.destination_timeout_s, headers={"User-Agent": USER_AGENT})
        return self._guarded

    async def _send_to_user_url(self, task: DeliveryTask, raw: str) -> Receipt:
        """POST to a URL from the user's addresses, through the SSRF guard and
        that destination's breaker."""
        dest = check_url(raw, self.egress, "webhook")
        body = self.body(task)
        session = await self._guarded_session()
        return await self.destinations.call(dest.key, "webhook", lambda: self._post_user(session, dest, task, body))

    async def _post_user(self, session: aiohttp.ClientSession, dest: Destination, task: DeliveryTask,
                         body: bytes) -> Receipt | DeliveryError:
        """One POST to ``dest``: its receipt, or the error for an answer that is not
        the destination failing; DestinationError (raised) when it failed."""
        try:
            async with session.post(dest.url, data=body, headers=self._headers(task, body),
                                    allow_redirects=False) as resp:
                await read_capped(resp)  # never into an error text: the body is the user's server talking
                status = resp.status
                if 200 <= status < 300 or status in self.tolerate:
                    return Receipt(message_id=resp.headers.get("X-Message-Id"))
                text = f"webhook {dest.key}: HTTP {status}"
                if status in (408, 429) or 500 <= status < 600:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status == 429 else None
                    raise DestinationError(text, status=status, retry_after=retry_after)
                # 3xx (redirects are not followed), 401/403 (the receiver refused
                # the signature) and other 4xx: this destination, not the provider.
                return InvalidMessage(text, status=status)
        except aiohttp.InvalidURL as exc:
            raise InvalidMessage(f"invalid webhook url for {dest.key}") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise DestinationError(f"webhook {dest.key}: {what}") from exc

    async def close(self) -> None:
        """Close both sessions (the configured url's and the user URLs')."""
        guarded, self._guarded = self._guarded, None
        if guarded is not None:
            await guarded.close()
        await super().close()


__all__ = ["USER_AGENT", "WebhookProvider"]
