"""A loopback server speaking Vonage's (Nexmo's) SMS API ``POST /sms/json``, as
Vonage documents it."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import urllib.parse

import aiohttp
import msgspec
from aiohttp import web

from providers.sms import segments
from providers.tracking.vonage import vonage_signature
from sandbox.http import _HttpSink

_TO = re.compile(r"[1-9][0-9]{6,14}")
_FROM = re.compile(r"[0-9]{3,15}|[A-Za-z0-9 ]{1,11}")
# Numbers under this prefix are unroutable (status 6), like the other sinks'
# invalid-number prefixes.
UNROUTABLE_PREFIX = "1555000"
MESSAGE_PRICE = "0.03330000"


class VonageSink(_HttpSink):
    """An HTTP server with Vonage's ``POST /sms/json`` taking the parameters as
    a form, JSON or query string, answering as Vonage documents: HTTP 200 for
    accepted and refused messages alike, ``{"message-count", "messages": [...]}``
    with one entry per segment when accepted (``status`` "0", ``message-id``,
    ``to``, ``remaining-balance``, ``message-price``, ``network``) and one
    entry ``{"status", "error-text"}`` when refused:

    - "2" Missing api_key / api_secret / from / to / text,
    - "4" Bad Credentials (wrong key or secret),
    - "3" Invalid to (not digits without ``+``: 7-15 digits) or invalid from,
    - "6" for a ``to`` starting with ``1555000`` (unroutable prefix),
    - "7" for a ``to`` in ``barred``, "33" for one in ``deactivated``,
    - "29" Non-Whitelisted Destination when ``whitelist`` is set and ``to`` is not in it.

    The status codes are Vonage's documented ones; the ``error-text`` wording
    is close to Vonage's, not guaranteed identical.

    A text that needs UCS-2 sent without ``type=unicode`` is accepted (Vonage
    would send it garbled) and counted in ``garbled``.

    Counts: ``messages`` (accepted requests), ``segments`` (``messages[]``
    entries of accepted requests), ``rejected`` (non-"0"), ``garbled``,
    ``failed`` (injected). ``bodies`` holds each accepted request's parameters
    (api_secret redacted) when ``keep_bodies``; ``last_id`` the last message-id.

    Delivery receipts: with a ``signature_secret``, each accepted message whose
    request names a ``callback`` gets a receipt POSTed there (a form, as Vonage
    does when the account asks for POST), signed as Vonage signs webhooks
    (``signature_method``), with ``timestamp`` and ``nonce``: ``receipt_status``
    ("delivered") and ``receipt_err_code`` ("0"), ``client-ref`` as sent.
    ``receipts_sent`` counts them; ``receipt_answers`` keeps the callback's
    HTTP statuses. ``send_inbound`` posts a text as if a person sent it to one
    of our numbers, signed the same way.

    Failure injection as the other sinks: ``fail_status``/``fail_next``, where
    ``fail_status = 200`` answers 200 with ``fail_code`` (a Vonage status, "1"
    Throttled by default), which is how Vonage reports most failures; 429
    adds ``Retry-After: <retry_after>``.
    """

    _stats_name = "vonage"
    _stats_counts = ("messages", "segments", "rejected", "garbled", "failed")

    def __init__(self, api_key: str, api_secret: str, host: str = "127.0.0.1", port: int = 0, *,
                 keep_bodies: bool = False, signature_secret: str | None = None, signature_method: str = "md5hash"):
        self.api_key, self.api_secret = api_key, api_secret
        self.signature_secret, self.signature_method = signature_secret, signature_method
        self.receipt_status, self.receipt_err_code = "delivered", "0"
        self.receipts_sent = 0
        self.receipt_answers: list[int] = []
        self._tasks: set[asyncio.Task] = set()
        self.host = host
        self.port = port
        self.keep_bodies = keep_bodies
        self.messages = self.segments = self.rejected = self.garbled = self.failed = 0
        self.bodies: list[dict] = []
        self.barred: set[str] = set()
        self.deactivated: set[str] = set()
        self.whitelist: set[str] | None = None
        self.balance = 100.0
        self.last_id: str | None = None
        self.fail_status: int | None = None
        self.fail_code = "1"
        self.fail_next = 0
        self.retry_after = "1"
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/sms/json", self._handle)
        return app

    async def _params(self, request: web.Request) -> dict[str, str]:
        params = {k: v for k, v in request.query.items()}
        if request.content_type == "application/json":
            try:
                doc = msgspec.json.decode(await request.read())
            except msgspec.DecodeError:
                doc = {}
            if isinstance(doc, dict):
                params.update({k: str(v) for k, v in doc.items() if v is not None})
        else:
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        return params

    async def _handle(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        if self.fail_status is not None:
            return self._failure()
        for name in ("api_key", "api_secret", "from", "to", "text"):
            if not p.get(name):
                return self._refuse("2", f"Missing {name}")
        if p["api_key"] != self.api_key or not secrets.compare_digest(p["api_secret"].encode(),
                                                                     self.api_secret.encode()):
            return self._refuse("4", "Bad Credentials")
        to = p["to"]
        if not _TO.fullmatch(to):
            return self._refuse("3", "Invalid to param")
        if not _FROM.fullmatch(p["from"]):
            return self._refuse("3", "Invalid from param")
        if to.startswith(UNROUTABLE_PREFIX):
            return self._refuse("6", "Unroutable message - rejected")
        if to in self.barred:
            return self._refuse("7", "Number barred.")
        if to in self.deactivated:
            return self._refuse("33", "Number de-activated")
        if self.whitelist is not None and to not in self.whitelist:
            return self._refuse("29", "Non White-listed Destination - rejected")
        text = p["text"]
        if p.get("type") != "unicode" and segments.encoding(text) == "UCS-2":
            # Sent as GSM-7 anyway, what GSM-7 cannot carry becomes "?", and it
            # is billed as what is sent.
            self.garbled += 1
            text = "".join(c if segments.is_gsm7(c) else "?" for c in text)
        n = len(segments.split(text))
        if self.keep_bodies:
            self.bodies.append({**p, "api_secret": "[redacted]"})
        self.messages += 1
        self.segments += n
        parts = []
        for _ in range(n):
            self.balance -= float(MESSAGE_PRICE)
            self.last_id = secrets.token_hex(8).upper()
            parts.append({"to": to, "message-id": self.last_id, "status": "0",
                          "remaining-balance": f"{self.balance:.8f}", "message-price": MESSAGE_PRICE,
                          "network": "23410"})
        callback = p.get("callback")
        if callback and self.signature_secret is not None:
            receipt = {"msisdn": to, "to": p["from"], "network-code": "23410", "messageId": parts[0]["message-id"],
                       "price": MESSAGE_PRICE, "status": self.receipt_status, "scts": time.strftime("%y%m%d%H%M"),
                       "err-code": self.receipt_err_code, "api-key": self.api_key,
                       "message-timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
            if p.get("client-ref"):
                receipt["client-ref"] = p["client-ref"]
            task = asyncio.get_running_loop().create_task(self._post_receipt(callback, receipt))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"message-count": str(n), "messages": parts})

    def signed(self, params: dict[str, str]) -> dict[str, str]:
        """``params`` with ``timestamp``, ``nonce`` and ``sig``, as Vonage signs a webhook."""
        assert self.signature_secret is not None
        out = {**params, "timestamp": str(int(time.time())), "nonce": secrets.token_hex(16)}
        out["sig"] = vonage_signature(self.signature_secret, out, self.signature_method)
        return out

    async def _post_receipt(self, url: str, receipt: dict[str, str]) -> None:
        await asyncio.sleep(0.05)  # after the send's answer, as a carrier's receipt comes
        self.receipts_sent += 1
        self.receipt_answers.append(await self._post(url, self.signed(receipt)))

    async def send_inbound(self, url: str, msisdn: str, to: str, text: str) -> tuple[int, dict]:
        """Post a text a person sent (``msisdn``, E.164 without the ``+``) to our
        number ``to``, as Vonage's inbound webhook does: (status, JSON answer)."""
        params = self.signed({"msisdn": msisdn, "to": to, "messageId": secrets.token_hex(8).upper(),
                              "text": text, "type": "text", "keyword": text.split(" ")[0].upper() if text else "",
                              "api-key": self.api_key,
                              "message-timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())})
        async with aiohttp.ClientSession() as s, s.post(url, data=urllib.parse.urlencode(params), headers={
                "Content-Type": "application/x-www-form-urlencoded"}) as r:
            return r.status, await r.json(content_type=None)

    @staticmethod
    async def _post(url: str, params: dict[str, str]) -> int:
        try:
            async with aiohttp.ClientSession() as s, s.post(url, data=urllib.parse.urlencode(params), headers={
                    "Content-Type": "application/x-www-form-urlencoded"}) as r:
                await r.read()
                return r.status
        except aiohttp.ClientError:
            return 0

    def _refuse(self, status: str, text: str) -> web.Response:
        self.rejected += 1
        return web.json_response({"message-count": "1", "messages": [{"status": status, "error-text": text}]})

    def _failure(self) -> web.Response:
        status = self._take_failure()
        if status == 200:
            return web.json_response({"message-count": "1",
                                      "messages": [{"status": self.fail_code, "error-text": "injected failure"}]})
        headers = {"Retry-After": self.retry_after} if status == 429 else None
        return web.json_response({"type": "about:blank", "title": "injected failure", "status": status},
                                 status=status, headers=headers)


__all__ = ["UNROUTABLE_PREFIX", "VonageSink"]
