"""SMS through Twilio's Programmable Messaging API:
``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded.

Settings: those of ``providers.twilio_api`` (``account_sid``, ``auth_token`` or
``api_key_sid``/``api_key_secret``, ``base_url``, ``timeout_s``,
``max_connections``, ``status_callback``), and:

- ``from``: the sender, an E.164 number (``+`` or ``00``), a short code or an
  alphanumeric sender ID; and/or ``messaging_service_sid`` (``MG`` + 32 hex).
  At least one is required; with both, Twilio uses the service and From.
- ``max_segments`` (10): a body that needs more segments is InvalidMessage
  before any request (Twilio's own limit is 1,600 characters, error 21617).
"""

from __future__ import annotations

import re

from policy.types import DeliveryTask
from providers.base import Receipt
from providers.errors import ConfigurationError
from providers.sms import check_segments, max_segments_setting, message_text, recipient, sender
from providers.twilio_api import TwilioApi

MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")


class TwilioSmsProvider(TwilioApi):
    """Provider for ``channel = "sms"``; see the module docstring for settings.

    ``send`` validates the recipient (E.164, ``providers.sms.e164``) and the body
    (text or subject, at most ``max_segments`` segments) and raises
    InvalidMessage without a request when either is wrong; otherwise it creates
    one Message with ``To``, ``From`` and/or ``MessagingServiceSid``, ``Body``
    and ``StatusCallback`` (when set) and returns ``Receipt(message_id=<SM sid>)``
    on 201. Errors are mapped by ``providers.twilio_api.twilio_error``. It never
    retries.
    """

    channel = "sms"
    kind = "twilio_sms"

    def __init__(self, name: str, settings: dict):
        self._init_api(name, settings)
        raw_from, service = settings.get("from"), settings.get("messaging_service_sid")
        if not raw_from and not service:
            raise ConfigurationError(f"twilio_sms provider {name!r}: 'from' or 'messaging_service_sid' is required")
        self.from_: str | None = None
        if raw_from:
            try:
                self.from_ = sender(raw_from)
            except ValueError as exc:
                raise ConfigurationError(f"twilio_sms provider {name!r}: bad 'from': {exc}") from exc
        if service is not None and (not isinstance(service, str) or not MESSAGING_SERVICE_SID.fullmatch(service)):
            raise ConfigurationError(f"twilio_sms provider {name!r}: messaging_service_sid must look like MG "
                                     "followed by 32 hex digits")
        self.messaging_service_sid: str | None = service
        self.max_segments = max_segments_setting("twilio_sms", name, settings)

    def form(self, task: DeliveryTask) -> dict[str, str]:
        """The Messages.json form for ``task`` (validated; InvalidMessage)."""
        to = recipient(task)
        body = message_text(task)
        check_segments(body, self.max_segments)
        form = {"To": to, "Body": body}
        if self.from_:
            form["From"] = self.from_
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        return form

    async def send(self, task: DeliveryTask) -> Receipt:
        """Send one SMS for ``task``; see the class docstring."""
        return await self._create("Messages", self.form(task))


__all__ = ["TwilioSmsProvider"]
