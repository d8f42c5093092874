"""SMS through Amazon SNS: ``Publish`` to a phone number (the Query API, form
POST to ``https://sns.<region>.amazonaws.com/``), signed with AWS Signature
Version 4 by botocore's signer.

Settings:

- ``access_key_id``, ``secret_access_key`` (required; ``session_token`` for
  temporary credentials): never put in an error message or ``settings``.
- ``region`` (required), ``base_url`` (``https://sns.<region>.amazonaws.com``):
  tests point it at a loopback SNS.
- ``sms_type``: ``Transactional`` (default) or ``Promotional``, SNS's
  ``AWS.SNS.SMS.SMSType``; ``promotional_categories`` (``["marketing"]``) are
  sent Promotional whatever ``sms_type`` says, as carriers expect.
- ``sender_id`` (``AWS.SNS.SMS.SenderID``, 1-11 letters and digits, where the
  country allows one) and ``origination_number`` (``AWS.MM.SMS.OriginationNumber``,
  E.164), both optional.
- ``timeout_s`` (10, connecting), ``max_connections`` (32, pool size).
- ``max_segments`` (10): a longer body is InvalidMessage before any request.

SNS answers ``PublishResponse/PublishResult/MessageId`` (the Receipt's
message_id) and errors as ``ErrorResponse/Error/{Type, Code, Message}``; see
``sns_error`` for the mapping.
"""

from __future__ import annotations

import re
import urllib.parse
import xml.etree.ElementTree as ET

import aiohttp

from policy.types import DeliveryTask
from providers.aws import MAX_ANSWER, SECRET_SETTINGS, AwsSigner, aws_error
from providers.base import Receipt
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
from providers.sms import check_segments, e164, max_segments_setting, message_text, recipient

API_VERSION = "2010-03-31"
SMS_TYPES = ("Transactional", "Promotional")
_SENDER_ID = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]{1,11}")  # SNS wants a letter in it
_NS = re.compile(r"\{[^}]*\}")
FORM = "application/x-www-form-urlencoded; charset=utf-8"

# SNS error codes -> what they mean for us (a refusal of one message never counts
# against the provider's breaker; our account's problems do and fail over).
ERROR_CODES: dict[str, type[DeliveryError]] = {
    "InvalidParameter": InvalidMessage,
    "InvalidParameterValue": InvalidMessage,
    "ParameterValueInvalid": InvalidMessage,
    "ValidationException": InvalidMessage,
    "AuthorizationError": AuthenticationError,
    "RequestExpired": AuthenticationError,  # this host's clock is off: every request fails alike
    "IncompleteSignature": AuthenticationError,
    "InvalidAction": ConfigurationError,  # base_url is not SNS
    "MalformedQueryString": ConfigurationError,
    "MissingParameter": ConfigurationError,
    "InvalidClientTokenId": AuthenticationError,
    "SignatureDoesNotMatch": AuthenticationError,
    "ExpiredToken": AuthenticationError,
    "AccessDenied": AuthenticationError,
    "OptInRequired": AuthenticationError,
    "Throttled": RateLimited,
    "Throttling": RateLimited,
    "ThrottlingException": RateLimited,
    "InternalError": ProviderError,
    "InternalFailure": ProviderError,
    "ServiceUnavailable": ProviderError,
    "KMSThrottling": RateLimited,
}


def _text(root: ET.Element, name: str) -> str | None:
    for el in root.iter():
        if _NS.sub("", el.tag) == name:
            return (el.text or "").strip()
    return None


def sns_error(status: int, headers, payload: bytes) -> DeliveryError:
    """The error for a non-2xx SNS answer: its ``Error/Code`` when it has one, else the status."""
    code = message = None
    try:
        root = ET.fromstring(payload[:MAX_ANSWER])
        code, message = _text(root, "Code"), _text(root, "Message")
    except ET.ParseError:
        pass
    text = f"sns HTTP {status}" + (f" {code}" if code else "") + (f": {message[:200]}" if message else "")
    cls = ERROR_CODES.get(code or "")
    if cls is InvalidMessage and message and re.search(r"SenderID|OriginationNumber|not valid to publish", message):
        cls = ConfigurationError  # our sender settings or region, not this message
    return aws_error(cls, status, headers, text)


class SnsSmsProvider(HttpSession):
    """Provider for ``channel = "sms"``; see the module docstring. ``send``
    validates the recipient (E.164) and the body (at most ``max_segments``
    segments) without a request, then publishes one message and returns
    ``Receipt(message_id=<MessageId>)``; it never retries."""

    channel = "sms"

    def __init__(self, name: str, settings: dict):
        self.name = name
        self._aws = AwsSigner(settings, "sns", name)
        self.settings = redacted(settings, *SECRET_SETTINGS)
        self.region = self._aws.region
        self.base_url = base_url_setting(settings, self._aws.endpoint("sns"), "sns", name)
        self.endpoint = self.base_url + "/"
        self.sms_type = str(settings.get("sms_type", "Transactional"))
        if self.sms_type not in SMS_TYPES:
            raise ConfigurationError(f"sns provider {name!r}: sms_type must be Transactional or Promotional")
        promotional = settings.get("promotional_categories", ["marketing"])
        if not isinstance(promotional, list) or not all(isinstance(c, str) for c in promotional):
            raise ConfigurationError(f"sns provider {name!r}: promotional_categories must be a list of categories")
        self.promotional = frozenset(promotional)
        sender_id = settings.get("sender_id")
        if sender_id is not None and (not isinstance(sender_id, str) or not _SENDER_ID.fullmatch(sender_id)):
            raise ConfigurationError(f"sns provider {name!r}: sender_id must be 1-11 letters and digits, "
                                     "at least one a letter")
        self.sender_id: str | None = sender_id
        self.origination_number: str | None = None
        if settings.get("origination_number"):
            try:
                self.origination_number = e164.normalize(str(settings["origination_number"]))
            except ValueError as exc:
                raise ConfigurationError(f"sns provider {name!r}: 'origination_number' must be E.164: {exc}") from exc
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 32))
        self.max_segments = max_segments_setting("sns", name, settings)
        self._session: aiohttp.ClientSession | None = None

    def form(self, task: DeliveryTask) -> list[tuple[str, str]]:
        """The Publish parameters for ``task`` (validated; InvalidMessage)."""
        to = recipient(task)
        text = message_text(task)
        check_segments(text, self.max_segments)
        sms_type = "Promotional" if task.category in self.promotional else self.sms_type
        attributes = [("AWS.SNS.SMS.SMSType", sms_type)]
        if self.sender_id:
            attributes.append(("AWS.SNS.SMS.SenderID", self.sender_id))
        if self.origination_number:
            attributes.append(("AWS.MM.SMS.OriginationNumber", self.origination_number))
        form = [("Action", "Publish"), ("Version", API_VERSION), ("PhoneNumber", to), ("Message", text)]
        for n, (attr, value) in enumerate(attributes, 1):
            form += [(f"MessageAttributes.entry.{n}.Name", attr),
                     (f"MessageAttributes.entry.{n}.Value.DataType", "String"),
                     (f"MessageAttributes.entry.{n}.Value.StringValue", value)]
        return form

    async def send(self, task: DeliveryTask) -> Receipt:
        """Publish one SMS for ``task``; see the class docstring."""
        body = urllib.parse.urlencode(self.form(task)).encode()
        status, headers, payload = await self._aws.post(await self.session(), self.endpoint, body, FORM)
        if not 200 <= status < 300:
            err = sns_error(status, headers, payload)
            err.args = (self._scrub(str(err.args[0])),)
            raise err
        try:
            message_id = _text(ET.fromstring(payload), "MessageId")
        except ET.ParseError:
            message_id = None  # accepted is accepted: an unreadable answer costs only the id
        return Receipt(message_id=message_id or None)

    def _scrub(self, text: str) -> str:
        return self._aws.scrub(text)


__all__ = ["ERROR_CODES", "SnsSmsProvider", "sns_error"]
