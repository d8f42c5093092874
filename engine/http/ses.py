"""``POST /v1/tracking/ses``: Amazon SES's sending events, as SNS delivers
them to an HTTP(S) subscription (``providers.tracking.sns``).

The SES provider's settings say which topics to take: ``events_topic_arn`` (a
topic ARN, or a list). A message from another topic, or one whose signature does
not verify with the certificate at its ``SigningCertURL`` (fetched only from the
SNS host of the topic's region, over HTTPS, at SNS's certificate path; kept once
it parses), or one older than an hour is a 401. A ``MessageId`` done before is
answered 200 and not applied again; one still being processed (SNS gave up
waiting) is a 503, so SNS tries it again later. A ``SubscriptionConfirmation`` of a listed topic is confirmed
by a GET of its ``SubscribeURL`` (an SNS host too); a ``Notification`` is
applied like every provider's events (``tracking.apply``): ``Bounce``
(``Permanent``: bounced, the address suppressed; ``Transient``: on the timeline),
``Complaint`` (complained, suppressed), ``Delivery``. The row is found by the
message's ``notification_id`` tag, else by SES's message id. A request that
could not be done is a 503 and its ``MessageId`` forgotten, so SNS's retry gets in.

``POST /v1/tracking/sns/inbound`` takes, the same way, the texts people send to
our numbers as AWS two-way SMS publishes them to the topics in the SNS SMS
provider's ``inbound_topic_arn``: STOP, START, YES and HELP are done as for the
other providers (``tracking.answer_by_text``), the answer texted back once per
``inboundMessageId``.

``events_url_prefix`` (an ``http://127.0.0.1:<port>/`` of a loopback SNS in
tests; nothing but a loopback host is taken) replaces the SNS-host rule for the
certificate and the SubscribeURL; never set it in production.
"""

from __future__ import annotations

import logging

import aiohttp
import msgspec
from aiohttp import web
from cryptography import x509

from engine.http.access import Media, Public, Route, register
from engine.http.common import ENGINE, Problem, read_body, reply
from engine.http.replays import SharedTokens, guarded, namespace
from engine.http.tracking import (
    InboundText,
    TrackingApplied,
    answer_by_text,
    apply,
    bad_payload,
    bad_signature,
    configured,
)
from providers.egress import read_capped
from providers.tracking import PayloadError, SignatureError, sns as sns_messages
from providers.tracking.sns import (
    FIELDS,
    MESSAGE_TYPE_HEADER,
    TOLERANCE_S,
    SnsMessage,
    parse_sns,
    precheck,
    ses_events,
    sns_url_ok,
    verify_sns,
)

log = logging.getLogger(__name__)

MESSAGE_IDS = web.AppKey("ses_message_ids", SharedTokens)
CERTS = web.AppKey("sns_certs", dict)
MAX_CERT = 16 * 1024
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)


class SnsDuplicate(msgspec.Struct):
    """An SNS message done before: its MessageId, not applied again."""

    duplicate: str


class SnsSubscribed(msgspec.Struct):
    """A SubscriptionConfirmation confirmed: the topic's ARN."""

    confirmed: str


class SnsUnsubscribed(msgspec.Struct):
    """An UnsubscribeConfirmation taken note of: the topic's ARN."""

    unsubscribed: str


def _topics(settings: list[dict], setting: str) -> frozenset[str]:
    out: set[str] = set()
    for s in settings:
        value = s.get(setting)
        out.update([value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)])
    return frozenset(out)


async def _fetch(url: str) -> bytes:
    async with aiohttp.ClientSession(timeout=FETCH_TIMEOUT) as s, s.get(url, allow_redirects=False) as r:
        if r.status != 200:
            raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
        return await read_capped(r, MAX_CERT)


async def _certificate(request: web.Request, url: str) -> bytes:
    """The PEM at ``url``, fetched once: kept only when it parses as a certificate,
    so a short read or a bad answer is fetched again next time."""
    certs = request.app[CERTS]
    pem = certs.get(url)
    if pem is None:
        try:
            pem = await _fetch(url)
            x509.load_pem_x509_certificate(pem)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.warning("sns: the signing certificate could not be fetched: %s", type(exc).__name__)
            raise Problem(503, "unavailable", [{"field": "SigningCertURL", "reason": "not usable now"}]) from None
        while len(certs) >= 16:  # SNS rotates a handful of certificates: the oldest goes
            del certs[next(iter(certs))]
        certs[url] = pem
    return pem


async def events(request: web.Request) -> web.Response:
    """Amazon SES's sending events (Bounce, Complaint, Delivery), as SNS delivers them.

    The SNS message must come from a topic in an SES provider's ``events_topic_arn``
    and carry SNS's signature (by the certificate at its ``SigningCertURL``, an SNS
    host's), at most an hour old: 401 otherwise. A SubscriptionConfirmation is
    confirmed, an UnsubscribeConfirmation noted, a MessageId done before answered
    ``duplicate``; one still being processed is a 503 (SNS tries again). SNS sends
    the JSON as ``text/plain``; the ``x-amz-sns-message-type`` header, when present,
    must name the message's ``Type`` (400 otherwise)."""
    return await _sns(request, "ses", "events_topic_arn", _ses_events)


async def sms_inbound(request: web.Request) -> web.Response:
    """A text a person sent to one of our numbers, as AWS two-way SMS publishes it to SNS.

    Checked as the SES events are, against an SNS SMS provider's ``inbound_topic_arn``.
    YES, STOP, START and HELP are done (``tracking.answer_by_text``) and the answer
    texted back once per ``inboundMessageId``; 503 when that could not be done."""
    return await _sns(request, "sns", "inbound_topic_arn", _sms_inbound)


async def _sns(request: web.Request, family: str, setting: str, notified) -> web.Response:
    """A message SNS delivers for the ``family`` providers' topics (``setting``),
    checked as the module says; a Notification goes to ``notified``."""
    hook = configured(request, family, setting)
    prefix = next((s["events_url_prefix"] for s in hook.settings if s.get("events_url_prefix")), None)
    try:
        m = parse_sns(await read_body(request))
    except PayloadError as exc:
        raise bad_payload(exc) from None
    if request.headers.get(MESSAGE_TYPE_HEADER, m.type) != m.type:
        raise bad_payload(PayloadError(f"{MESSAGE_TYPE_HEADER} and Type disagree"))
    topics = _topics(hook.settings, setting)
    try:
        precheck(m, topics)  # before anything is fetched for a stranger
    except SignatureError as exc:
        raise bad_signature(exc, "TopicArn") from None
    if not sns_url_ok(m.signing_cert_url, m.topic_arn, "cert", prefix):
        raise bad_signature(SignatureError("SigningCertURL is not SNS's"), "SigningCertURL")
    try:
        verify_sns(m, await _certificate(request, m.signing_cert_url), topics)
    except SignatureError as exc:
        raise bad_signature(exc, "Signature") from None
    seen = request.app[MESSAGE_IDS]
    state, claim = await seen.claim(m.message_id)
    if state == "busy":  # SNS gave up waiting and sent it again: answer when the first is done
        raise Problem(503, "unavailable", [{"field": "MessageId", "reason": "being processed"}])
    if state == "done":
        return reply(SnsDuplicate(m.message_id))  # done before: SNS's copy needs no second go
    return await guarded(seen, claim, _handle(request, m, hook.channels, prefix, notified))


async def _handle(request: web.Request, m, channels: list[str], prefix: str | None, notified) -> web.Response:
    if m.type == "SubscriptionConfirmation":
        if not m.subscribe_url or not sns_url_ok(m.subscribe_url, m.topic_arn, "subscribe", prefix):
            raise bad_payload(PayloadError("SubscribeURL is not SNS's"))
        try:
            await _fetch(m.subscribe_url)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("sns: the subscription could not be confirmed: %s", type(exc).__name__)
            raise Problem(503, "unavailable", [{"field": "SubscribeURL", "reason": "not reachable now"}]) from None
        log.info("sns: subscribed to %s", m.topic_arn)
        return reply(SnsSubscribed(m.topic_arn))
    if m.type == "UnsubscribeConfirmation":  # not subscribed again: that is an operator's choice
        log.warning("sns: %s unsubscribed this endpoint", m.topic_arn)
        return reply(SnsUnsubscribed(m.topic_arn))
    return await notified(request, m, channels)


async def _ses_events(request: web.Request, m, channels: list[str]) -> web.Response:
    try:
        found = ses_events(m.message)
    except PayloadError as exc:
        raise bad_payload(exc) from None
    return await apply(request, found, channels)


async def _sms_inbound(request: web.Request, m, channels: list[str]) -> web.Response:
    try:
        number, text, mid = sns_messages.sms_inbound(m.message)
    except PayloadError as exc:
        raise bad_payload(exc) from None
    return reply(await answer_by_text(request.app[ENGINE], number, text, f"sns:{mid}"))


def sns_body(message: str) -> tuple[Media, Media]:
    """The body SNS POSTs (``SnsMessage``, as the handlers decode it), whose
    ``Message`` is ``message``: JSON, sent as ``text/plain`` by SNS."""
    schema = msgspec.json.schema_components([SnsMessage])[1]["SnsMessage"]
    props = dict(schema["properties"])
    props["Type"] = {"enum": list(FIELDS)}
    props["SignatureVersion"] = {"enum": ["1", "2"], "description": "1: SHA1withRSA, 2: SHA256withRSA"}
    props["Message"] = {"type": "string", "description": message}
    props["Timestamp"] = {"type": "string", "description": "ISO 8601; at most an hour from now"}
    doc = {**schema, "properties": props, "additionalProperties": True}
    return (Media("application/json", doc),
            Media("text/plain", {"type": "string", "contentMediaType": "application/json",
                                 "description": "The same JSON document: SNS sends it as text/plain"}))


ALSO = (SnsDuplicate, SnsSubscribed, SnsUnsubscribed)
SNS_ERRORS = (400, 401, 404, 413, 503)
ROUTES = [
    Route("POST", "/v1/tracking/ses", events, Public("SNS's signature (its signing certificate) is verified"),
          body=sns_body("An SES event (its eventType or notificationType, mail.messageId, mail.tags) as JSON"),
          answers={200: (TrackingApplied, *ALSO)}, errors=SNS_ERRORS),
    Route("POST", "/v1/tracking/sns/inbound", sms_inbound,
          Public("SNS's signature (its signing certificate) is verified"),
          body=sns_body("The inbound SMS (originationNumber, messageBody, inboundMessageId) as JSON"),
          answers={200: (InboundText, *ALSO)}, errors=SNS_ERRORS),
]


def add_routes(app: web.Application) -> None:
    app[MESSAGE_IDS] = SharedTokens("sns", app[ENGINE].redis, TOLERANCE_S, namespace(app[ENGINE]))
    app[CERTS] = {}
    register(app, ROUTES)
