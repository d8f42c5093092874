"""MessageBird's SMS webhooks (``providers.tracking.messagebird``):

- ``GET``/``POST /v1/tracking/messagebird``: status reports, applied like every
  provider's tracking events (``tracking.apply``); the row is found by
  ``reference``, the notification id every MessageBird text carries;
- ``GET``/``POST /v1/tracking/messagebird/inbound``: texts people send to our
  numbers, done and answered as Vonage's are (``tracking.answer_by_text``).

Both are verified with the provider's ``signing_key`` (MessageBird's signing
key, not its access key): the ``MessageBird-Signature-JWT`` must be valid now,
name the URL that was called (as it arrived, as a proxy's ``X-Forwarded-*`` say
it was called, or the configured ``status_callback``/``inbound_url`` with the
request's query string) and the body, and its ``jti`` must not have been seen;
a request that could not be done is a 503 and its ``jti`` forgotten.
Parameters come as a query, a form or JSON.
"""

from __future__ import annotations

from aiohttp import web

from engine.http.access import register
from engine.http.common import ENGINE, read_body, reply
from engine.http.replays import SharedTokens, guarded, namespace
from engine.http.tracking import (
    InboundText,
    TrackingApplied,
    _urls,
    answer_by_text,
    apply,
    bad_payload,
    bad_signature,
    configured,
    webhook_params,
    webhook_routes,
)
from providers.tracking import PayloadError, SignatureError
from providers.tracking.messagebird import (
    SIGNATURE_HEADER,
    TOKEN_LIFE_S,
    messagebird_event,
    messagebird_inbound,
    verify_messagebird,
)

JTIS = web.AppKey("messagebird_jtis", SharedTokens)
CLAIM = web.RequestKey("messagebird_claim", object)


def _candidates(request: web.Request, settings: list[dict], setting: str) -> list[str]:
    """The URLs MessageBird may have signed: ``tracking._urls`` and the raw form
    of the URL as it arrived, each configured one with this request's query."""
    raw_query = request.rel_url.raw_query_string
    out = [f"{request.url.scheme}://{request.host}{request.raw_path}"]
    for url in _urls(request, settings, setting):
        out.append(url)
        if raw_query and "?" not in url:
            out.append(f"{url}?{raw_query}")
    return list(dict.fromkeys(out))


async def _params(request: web.Request, setting: str) -> tuple[list[str], dict[str, str]]:
    hook = configured(request, "messagebird", "signing_key")
    body = await read_body(request) if request.method == "POST" else b""
    urls = _candidates(request, hook.settings, setting)
    token = request.headers.get(SIGNATURE_HEADER)
    last: SignatureError | None = None
    for s in hook.settings:
        try:
            claims = verify_messagebird(str(s["signing_key"]), token, urls, body)
            break
        except SignatureError as exc:
            last = exc
    else:
        raise bad_signature(last or SignatureError("no signing key"), SIGNATURE_HEADER)
    params = webhook_params(request, body)
    state, claim = await request.app[JTIS].claim(str(claims["jti"]))
    if state != "new":
        raise bad_signature(SignatureError("token seen before"), SIGNATURE_HEADER)
    request[CLAIM] = claim
    return hook.channels, params


async def report(request: web.Request) -> web.Response:
    """MessageBird's SMS status report (``id``, ``reference``, ``status``, ``statusReason``).

    Applied like every provider's tracking events; the row is found by
    ``reference``, the notification id. ``MessageBird-Signature-JWT`` must be
    MessageBird's token (the provider's ``signing_key``), valid now, for the URL
    called and the body, its ``jti`` not seen before: 401 otherwise. 503 when the
    report could not be applied (its ``jti`` is then forgotten)."""
    channels, params = await _params(request, "status_callback")

    async def work() -> web.Response:
        try:
            event = messagebird_event(params)
        except PayloadError as exc:
            raise bad_payload(exc) from None
        return await apply(request, [event], channels)
    return await guarded(request.app[JTIS], request[CLAIM], work())


async def inbound(request: web.Request) -> web.Response:
    """A text a person sent to one of our numbers (MessageBird's inbound message: ``originator``, ``body``).

    YES, STOP, START and HELP are done and the answer texted back once per
    message, as for Vonage. Signed as the status reports are, with the
    configured ``inbound_url`` (401 otherwise); 503 when the reply could not be
    applied or answered."""
    _, params = await _params(request, "inbound_url")

    async def work() -> InboundText:
        try:
            number, text = messagebird_inbound(params)
        except PayloadError as exc:
            raise bad_payload(exc) from None
        ref = f"messagebird:{params.get('id') or request.headers.get(SIGNATURE_HEADER, '')[-43:]}"
        return await answer_by_text(request.app[ENGINE], number, text, ref)
    return reply(await guarded(request.app[JTIS], request[CLAIM], work()))


REPORT = {
    "id": "MessageBird's id of the message", "reference": "the notification id Tidings sent",
    "recipient": "the recipient's number", "status": "scheduled, sent, buffered, delivered, expired, "
    "delivery_failed", "statusReason": "why (unknown subscriber, opted out: the number is suppressed)",
    "statusErrorCode": "MessageBird's error code", "statusDatetime": "when the status was set (RFC 3339)",
}
INBOUND = {
    "originator": "the sender's number", "body": "the text", "recipient": "our number",
    "id": "MessageBird's id of it", "createdDatetime": "when MessageBird received it (RFC 3339)",
}

WHY = "MessageBird's signature (signing_key) is verified"
ROUTES = [*webhook_routes("/v1/tracking/messagebird", report, WHY, REPORT, TrackingApplied),
          *webhook_routes("/v1/tracking/messagebird/inbound", inbound, WHY, INBOUND, InboundText)]


def add_routes(app: web.Application) -> None:
    app[JTIS] = SharedTokens("messagebird", app[ENGINE].redis, TOKEN_LIFE_S, namespace(app[ENGINE]))
    register(app, ROUTES)
