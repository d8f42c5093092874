"""Vonage's SMS webhooks (``providers.tracking.vonage``):

- ``GET``/``POST /v1/tracking/vonage``: delivery receipts, applied like every
  provider's tracking events (``tracking.apply``: the row moves forward, a
  permanent failure suppresses the number);
- ``GET``/``POST /v1/tracking/vonage/inbound``: the texts people send to our
  numbers: STOP, START, YES and HELP are done as for Twilio
  (``tracking.inbound_keyword``), and the answer is texted back through the
  owning UserShard, once per inbound message (Vonage cannot answer in the
  response, as Twilio's TwiML does).

Both are signed with the account's signature secret (the provider's
``signature_secret`` setting; ``signature_method``: ``md5hash``, Vonage's
default, or ``md5``/``sha1``/``sha256``/``sha512`` for its HMAC methods, as the
dashboard spells them too). An unsigned request, a bad signature, a timestamp
more than 5 minutes from now or a nonce seen before is a 401; a request that
could not be done is a 503 and its nonce forgotten, so Vonage's next delivery of
it gets in.
Parameters come as a query (GET), a form or JSON (POST), as the account's
webhook setting says.
"""

from __future__ import annotations

import logging

from aiohttp import web

from engine.http.access import register
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
    webhook_params,
    webhook_routes,
)
from providers.tracking import PayloadError, SignatureError
from providers.tracking.vonage import VONAGE_TOLERANCE_S, signature_method, verify_vonage, vonage_event, vonage_inbound

log = logging.getLogger(__name__)

NONCES = web.AppKey("vonage_nonces", SharedTokens)
CLAIM = web.RequestKey("vonage_claim", object)


async def _params(request: web.Request) -> tuple[list[str], dict[str, str]]:
    """(the channels, the parameters) of a Vonage webhook whose signature
    verifies with one configured provider's secret; else 400/401."""
    hook = configured(request, "vonage", "signature_secret")
    params = webhook_params(request, await read_body(request) if request.method == "POST" else b"")
    last: SignatureError | None = None
    for s in hook.settings:
        try:
            method = signature_method(str(s.get("signature_method", "md5hash")))
        except ValueError:  # the provider refuses it at start; a config that skipped that is ours to fix
            log.error("vonage: a provider's signature_method is not one of Vonage's; its webhooks are refused")
            raise Problem(503, "unavailable", [{"field": "signature_method", "reason": "misconfigured"}]) from None
        try:
            verify_vonage(str(s["signature_secret"]), params, method)
            break
        except SignatureError as exc:
            last = exc
    else:
        raise bad_signature(last or SignatureError("no signature secret"), "sig")
    nonce = params.get("nonce", "")
    if not nonce:
        raise bad_signature(SignatureError("missing nonce"), "nonce")
    state, claim = await request.app[NONCES].claim(nonce)
    if state != "new":
        raise bad_signature(SignatureError("nonce seen before"), "nonce")
    request[CLAIM] = claim
    return hook.channels, params


async def receipt(request: web.Request) -> web.Response:
    """Vonage's SMS delivery receipt (``messageId``, ``status``, ``err-code``, ``client-ref``).

    Applied like every provider's tracking events: the row moves forward, a
    permanent failure (err-code 3 or 9) suppresses the number. The parameters
    (query, form or flat JSON) must carry Vonage's ``sig`` by a provider's
    ``signature_secret``, a ``timestamp`` within 5 minutes and a new ``nonce``:
    401 otherwise; 503 when the provider's ``signature_method`` is not one of
    Vonage's, or the receipt could not be applied (its nonce is then forgotten)."""
    channels, params = await _params(request)

    async def work() -> web.Response:
        try:
            event = vonage_event(params)
        except PayloadError as exc:
            raise bad_payload(exc) from None
        return await apply(request, [event], channels)
    return await guarded(request.app[NONCES], request[CLAIM], work())


async def inbound(request: web.Request) -> web.Response:
    """A text a person sent to one of our numbers (Vonage's inbound message: ``msisdn``, ``text``).

    YES, STOP, START and HELP are done as for Twilio, and the answer texted back
    through the owning UserShard once per message. Signed as the delivery
    receipts are (401 otherwise); 503 when the reply could not be applied or
    answered (its nonce is then forgotten, so Vonage's next delivery gets in)."""
    _, params = await _params(request)

    async def work() -> InboundText:
        try:
            number, text = vonage_inbound(params)
        except PayloadError as exc:
            raise bad_payload(exc) from None
        ref = f"vonage:{params.get('messageId') or params['nonce']}"
        return await answer_by_text(request.app[ENGINE], number, text, ref)
    return reply(await guarded(request.app[NONCES], request[CLAIM], work()))


SIGNED = {
    "sig": "Vonage's signature of the other parameters (the provider's signature_secret and signature_method)",
    "timestamp": "epoch seconds of the signature: at most 5 minutes from now",
    "nonce": "unique per request: one seen before is a replay (401)",
}
RECEIPT = {
    "messageId": "Vonage's id of the message", "status": "delivered, expired, failed, rejected, accepted, "
    "buffered, unknown", "err-code": "Vonage's error code (3, 9: the number is gone)",
    "msisdn": "the recipient's number", "to": "the sender id", "client-ref": "the notification id Tidings sent",
    "message-timestamp": "when the status was set (YYYY-MM-DD HH:MM:SS, UTC)", "network-code": "the carrier",
    "price": "the price", "scts": "the carrier's timestamp", "api-key": "the account's API key", **SIGNED,
}
INBOUND = {
    "msisdn": "the sender's number", "text": "the text", "to": "our number", "messageId": "Vonage's id of it",
    "type": "text, unicode, binary", "keyword": "the text's first word, upper case",
    "message-timestamp": "when Vonage received it (YYYY-MM-DD HH:MM:SS, UTC)", "api-key": "the account's API key",
    **SIGNED,
}

WHY = "Vonage's signature (signature_secret) is verified"
ROUTES = [*webhook_routes("/v1/tracking/vonage", receipt, WHY, RECEIPT, TrackingApplied),
          *webhook_routes("/v1/tracking/vonage/inbound", inbound, WHY, INBOUND, InboundText)]


def add_routes(app: web.Application) -> None:
    app[NONCES] = SharedTokens("vonage", app[ENGINE].redis, VONAGE_TOLERANCE_S, namespace(app[ENGINE]))
    register(app, ROUTES)
