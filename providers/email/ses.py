"""Email through Amazon SES API v2: ``POST /v2/email/outbound-emails`` (SendEmail,
simple content), signed with AWS Signature Version 4 (``providers.aws``).

Settings:

- ``access_key_id``, ``secret_access_key`` (``session_token``), ``region``
  (required); ``base_url`` (``https://email.<region>.amazonaws.com``): tests
  point it at a loopback SES.
- ``sender`` (required): ``"Name <addr>"`` or ``addr``, a verified identity.
- ``configuration_set``: SES's ``ConfigurationSetName``: where the account sends
  its bounce, complaint and delivery events (SNS), and its own sending rules.
- ``transactional_categories`` (["security", "account", "transactional"]): these
  get no List-Unsubscribe header; ``unsubscribe_url`` as for the other email
  providers (the engine's own one-click URL comes first).
- ``timeout_s`` (10, connecting), ``max_connections`` (32, pool size).

Each message carries ``EmailTags`` ``notification_id`` and ``category``: SES's
events name them, which is how an event finds its row. ``List-Unsubscribe`` and
``List-Unsubscribe-Post`` (RFC 8058) go in the simple content's ``Headers``;
SES signs the message with the identity's DKIM key, headers included.

SES answers ``{"MessageId"}`` (the Receipt's message_id) and errors with the
``X-Amzn-ErrorType`` header and ``{"message"}``; see ``ses_error``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import formataddr

import aiohttp
import msgspec

from policy.email import DEFAULT_TRANSACTIONAL, is_address, unsubscribe_url
from policy.types import DeliveryTask
from providers.aws import MAX_ANSWER, SECRET_SETTINGS, AwsSigner, aws_error
from providers.base import Receipt
from providers.email.common import check_content
from providers.email.sendgrid import parse_sender
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    InvalidMessage,
    ProviderError,
    RateLimited,
)
from providers.http_session import HttpSession, base_url_setting
from providers.secrets import redacted

_TAG = re.compile(r"[^A-Za-z0-9_-]")  # what an EmailTags value may hold
_encoder = msgspec.json.Encoder()

# SES v2 error types -> what they mean for us: a refusal of this message is an
# InvalidMessage; our account or setup failing is an AuthenticationError or a
# ConfigurationError (the breaker counts it, the next provider is tried).
ERROR_TYPES: dict[str, type[DeliveryError]] = {
    "MessageRejected": InvalidMessage,
    "BadRequestException": InvalidMessage,
    "MailFromDomainNotVerifiedException": ConfigurationError,
    "NotFoundException": ConfigurationError,  # e.g. no such configuration set
    "AccountSuspendedException": AuthenticationError,
    "SendingPausedException": AuthenticationError,
    "AccessDeniedException": AuthenticationError,
    "UnrecognizedClientException": AuthenticationError,
    "InvalidSignatureException": AuthenticationError,
    "TooManyRequestsException": RateLimited,
    "LimitExceededException": RateLimited,
    "ThrottlingException": RateLimited,
    "InternalFailure": ProviderError,
    "ServiceUnavailable": ProviderError,
}


def ses_error(status: int, headers: Mapping[str, str], payload: bytes) -> DeliveryError:
    """The error for a non-2xx SES answer: by ``X-Amzn-ErrorType`` (or the body's
    ``__type``) when SES names one, else by the status."""
    kind = (headers.get("X-Amzn-ErrorType") or "").split(":")[0].strip()
    message = ""
    try:
        doc = msgspec.json.decode(payload[:MAX_ANSWER])
        if isinstance(doc, dict):
            message = str(doc.get("message") or doc.get("Message") or "")[:200]
            kind = kind or str(doc.get("__type") or "").rsplit("#", 1)[-1]
    except (msgspec.DecodeError, RecursionError):
        pass
    text = f"ses HTTP {status}" + (f" {kind}" if kind else "") + (f": {message}" if message else "")
    cls = ERROR_TYPES.get(kind)
    if kind == "MessageRejected" and "not verified" in message.lower():
        cls = ConfigurationError  # SES refuses our sender identity, not this message: the next provider may send
    return aws_error(cls, status, headers, text)


class SesEmailProvider(HttpSession):
    """Provider for ``channel = "email"``; see the module docstring. ``send``
    validates the address and the content without a request, then sends one
    message and returns ``Receipt(message_id=<MessageId>)``; it never retries."""

    channel = "email"

    def __init__(self, name: str, settings: dict):
        self.name = name
        self._aws = AwsSigner(settings, "ses", name)
        self.settings = redacted(settings, *SECRET_SETTINGS)
        self.region = self._aws.region
        try:
            sender = parse_sender(str(settings.get("sender") or ""))
        except ValueError as exc:
            raise ConfigurationError(f"ses provider {name!r}: bad or missing 'sender': {exc}") from exc
        try:  # a non-ASCII name MIME-encoded; the address must be ASCII (punycode the domain)
            self.from_ = formataddr((sender.get("name", ""), sender["email"]))
        except UnicodeError:
            raise ConfigurationError(f"ses provider {name!r}: the sender address must be ASCII "
                                     "(an international domain in its punycode form)") from None
        self.base_url = base_url_setting(settings, self._aws.endpoint("email"), "ses", name)
        self.endpoint = f"{self.base_url}/v2/email/outbound-emails"
        cs = settings.get("configuration_set")
        if cs is not None and (not isinstance(cs, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cs)):
            raise ConfigurationError(f"ses provider {name!r}: configuration_set must be 1-64 letters, digits, _ or -")
        self.configuration_set: str | None = cs
        self.transactional = frozenset(settings.get("transactional_categories", DEFAULT_TRANSACTIONAL))
        self.unsubscribe_url: str | None = settings.get("unsubscribe_url")
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 32))
        self._session: aiohttp.ClientSession | None = None

    def document(self, task: DeliveryTask) -> dict:
        """The SendEmail document for ``task`` (validated; InvalidMessage)."""
        c = task.content
        check_content(c)
        if not is_address(task.address):
            raise InvalidMessage(f"ses: not a bare email address: {task.address!r}")
        body = {}
        if c.text:
            body["Text"] = {"Data": c.text, "Charset": "UTF-8"}
        if c.html:
            body["Html"] = {"Data": c.html, "Charset": "UTF-8"}
        simple: dict = {"Subject": {"Data": c.subject, "Charset": "UTF-8"}, "Body": body}
        url = unsubscribe_url(task, self.unsubscribe_url)
        if url and task.category not in self.transactional:
            simple["Headers"] = [{"Name": "List-Unsubscribe", "Value": f"<{url}>"},
                                 {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}]
        doc: dict = {"FromEmailAddress": self.from_, "Destination": {"ToAddresses": [task.address]},
                     "Content": {"Simple": simple},
                     "EmailTags": [{"Name": "notification_id", "Value": _TAG.sub("_", task.notification_id)[:256]},
                                   {"Name": "category", "Value": _TAG.sub("_", task.category)[:256]}]}
        if self.configuration_set:
            doc["ConfigurationSetName"] = self.configuration_set
        return doc

    async def send(self, task: DeliveryTask) -> Receipt:
        """Send one email for ``task``; see the class docstring."""
        body = _encoder.encode(self.document(task))
        status, answer_headers, payload = await self._aws.post(await self.session(), self.endpoint, body,
                                                               "application/json")
        if not 200 <= status < 300:
            err = ses_error(status, answer_headers, payload)
            err.args = (self._aws.scrub(str(err.args[0])),)
            raise err
        try:
            doc = msgspec.json.decode(payload)
            message_id = doc.get("MessageId") if isinstance(doc, dict) else None
        except (msgspec.DecodeError, RecursionError):
            message_id = None  # accepted is accepted: an unreadable answer costs only the id
        return Receipt(message_id=str(message_id) if message_id else None)


__all__ = ["ERROR_TYPES", "SesEmailProvider", "ses_error"]
