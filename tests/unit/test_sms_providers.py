"""The SMS providers against loopback servers that speak their APIs:
TwilioSmsProvider / sandbox.twilio, MessageBirdProvider /
sandbox.messagebird, VonageSmsProvider / sandbox.vonage."""

import base64

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from provider_helpers import pointed_at, refused, serving, started

from engine.embedded import free_port
from policy.types import Content, DeliveryTask
from providers.errors import (
    AddressGone,
    AuthenticationError,
    ConfigurationError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.registry import PROVIDER_TYPES, create
from providers.sms.messagebird import MessageBirdProvider, messagebird_error
from providers.sms.twilio import TwilioSmsProvider
from providers.sms.vonage import STATUS_ERRORS, VonageSmsProvider, vonage_error
from providers.twilio_api import twilio_error
from sandbox.messagebird import MessageBirdSink
from sandbox.twilio import TwilioSink
from sandbox.vonage import VonageSink

ACCOUNT = "AC" + "a1" * 16
TOKEN = "twilio-auth-t0ken-s3cret"
KEY_SID, KEY_SECRET = "SK" + "b2" * 16, "twilio-api-key-s3cret"
SERVICE = "MG" + "c3" * 16
MB_KEY = "live_messagebird_k3y"
VONAGE_KEY, VONAGE_SECRET = "vonagekey", "vonage-s3cret-value"


def task(address: str = "+14155552671", text: str | None = "Your code is 123456", subject: str | None = None,
         n: int = 1) -> DeliveryTask:
    return DeliveryTask(notification_id=f"nid-{n}", user_id="u1", channel="sms", category="security",
                        address=address, content=Content(subject=subject, text=text))


# -- Twilio ---------------------------------------------------------------------

@pytest.fixture
async def twilio_sink():
    async with serving(TwilioSink(ACCOUNT, TOKEN, api_keys={KEY_SID: KEY_SECRET}, keep_bodies=True)) as s:
        yield s


def twilio(sink: TwilioSink | None = None, **settings) -> TwilioSmsProvider:
    base = {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+15005550006", "timeout_s": 2}
    return TwilioSmsProvider("twilio-test",
                             {k: v for k, v in pointed_at(sink, base, settings).items() if v is not None})


@pytest.fixture
async def tw(twilio_sink):
    async with started(twilio(twilio_sink)) as p:
        yield p


async def test_twilio_sends_the_documented_form(twilio_sink, tw):
    receipt = await tw.send(task("+1 (415) 555-2671"))
    assert receipt.message_id == twilio_sink.last_sid and receipt.message_id.startswith("SM")
    assert twilio_sink.bodies == [{"To": "+14155552671", "From": "+15005550006", "Body": "Your code is 123456"}]
    assert (twilio_sink.messages, twilio_sink.segments, twilio_sink.rejected) == (1, 1, 0)


async def test_twilio_messaging_service_callback_api_key_and_subject_fallback(twilio_sink):
    p = twilio(twilio_sink, auth_token=None, api_key_sid=KEY_SID, api_key_secret=KEY_SECRET, **{"from": None},
               messaging_service_sid=SERVICE, status_callback="https://tidings.test/status/twilio")
    try:
        await p.send(task(text=None, subject="Sign-in from a new device"))
    finally:
        await p.close()
    assert twilio_sink.bodies == [{"To": "+14155552671", "Body": "Sign-in from a new device",
                                   "MessagingServiceSid": SERVICE,
                                   "StatusCallback": "https://tidings.test/status/twilio"}]


async def test_twilio_long_and_unicode_bodies_up_to_max_segments(twilio_sink, tw):
    await tw.send(task(text="a" * 1530))            # 10 x 153 septets: exactly the default limit
    await tw.send(task(text="Привет 👋 " * 3))      # UCS-2, one segment
    assert twilio_sink.segments == 11
    with pytest.raises(InvalidMessage, match="11 segments"):
        await tw.send(task(text="a" * 1531))
    p = twilio(twilio_sink, max_segments=1)
    try:
        with pytest.raises(InvalidMessage, match="max_segments 1"):
            await p.send(task(text="ж" * 71))
    finally:
        await p.close()
    assert twilio_sink.requests["Messages"] == 2


@pytest.mark.parametrize("address, why", [
    ("", "empty"), ("415 555 2671", "not international"), ("+1415555267x", "character 'x'"),
    ("+0123456789", "cannot start with 0"), ("user@example.com", "not international"),
])
async def test_twilio_bad_numbers_are_refused_before_sending(twilio_sink, tw, address, why):
    with pytest.raises(InvalidMessage, match=why):
        await tw.send(task(address))
    assert sum(twilio_sink.requests.values()) == 0


async def test_twilio_refuses_empty_bodies_before_sending(twilio_sink, tw):
    with pytest.raises(InvalidMessage, match="needs text"):
        await tw.send(task(text="", subject=None))
    assert sum(twilio_sink.requests.values()) == 0


@pytest.mark.parametrize("to, code", [
    ("+15550001234", 21211),   # the sink's invalid-number prefix
    ("+15005550001", 21211),   # Twilio's magic numbers, as documented for test credentials
    ("+15005550009", 21614),   # not a mobile number
    ("+15005550004", 21610),   # replied STOP: refused, but the number is not gone
    ("+15005550003", 21408),   # no permission for the region: per recipient, not the account
    ("+15005550002", 21612),
])
async def test_twilio_recipient_refusals_are_invalid_message(twilio_sink, tw, to, code):
    err = await refused(tw, task(to), InvalidMessage)
    assert not isinstance(err, AddressGone) and not err.retryable
    assert err.status == 400 and f"code {code}" in str(err)
    assert twilio_sink.rejected == 1 and twilio_sink.messages == 0


async def test_twilio_unsubscribed_recipient_is_invalid_message(twilio_sink, tw):
    twilio_sink.unsubscribed.add("+14155552671")
    err = await refused(tw, task(), InvalidMessage)
    assert "code 21610" in str(err) and "unsubscribed" in str(err)


@pytest.mark.parametrize("sender, error, code", [
    ("+15005550001", ConfigurationError, 21212),   # invalid From: every send would fail
    ("+15005550007", ConfigurationError, 21606),   # From not owned / not SMS-capable
    ("+15005550008", RateLimited, 21611),          # the sender's queue is full: slow down
])
async def test_twilio_sender_problems(twilio_sink, sender, error, code):
    p = twilio(twilio_sink, **{"from": sender})
    try:
        err = await refused(p, task(), error)
    finally:
        await p.close()
    assert f"code {code}" in str(err)


async def test_twilio_wrong_token_is_authentication_error_without_secrets(twilio_sink):
    wrong = "wrong-t0ken-d0nt-leak"
    p = twilio(twilio_sink, auth_token=wrong)
    try:
        err = await refused(p, task(), AuthenticationError)
    finally:
        await p.close()
    assert err.status == 401 and "code 20003" in str(err) and "Authenticate" in str(err)
    assert wrong not in str(err) and TOKEN not in str(err) and wrong not in repr(p.settings)
    assert twilio_sink.rejected == 1


async def test_twilio_other_account_path_is_configuration_error(twilio_sink):
    other = "AC" + "d4" * 16
    p = twilio(twilio_sink, account_sid=other, auth_token=None, api_key_sid=KEY_SID, api_key_secret=KEY_SECRET)
    try:
        err = await refused(p, task(), ConfigurationError)
    finally:
        await p.close()
    assert err.status == 404 and "code 20404" in str(err)


async def test_twilio_429_is_rate_limited_with_retry_after(twilio_sink, tw):
    twilio_sink.fail_status, twilio_sink.fail_next, twilio_sink.retry_after = 429, 1, "7"
    err = await refused(tw, task(), RateLimited)
    assert err.retryable and err.status == 429 and err.retry_after == 7.0 and "code 20429" in str(err)
    await tw.send(task())  # only one failure
    assert (twilio_sink.failed, twilio_sink.messages) == (1, 1)


@pytest.mark.parametrize("status", [500, 503])
async def test_twilio_5xx_is_provider_error(twilio_sink, tw, status):
    twilio_sink.fail_status = status
    err = await refused(tw, task(), ProviderError)
    assert err.retryable and err.status == status


async def test_twilio_unreachable_is_network_error():
    p = twilio(base_url=f"http://127.0.0.1:{free_port()}")
    try:
        err = await refused(p, task(), NetworkError)
    finally:
        await p.close()
    assert err.retryable and TOKEN not in str(err)


@pytest.mark.parametrize("status, body, headers, error", [
    (400, b"not json", {}, InvalidMessage),
    (400, b'{"code": 21617, "message": "too long", "status": 400}', {}, InvalidMessage),
    (401, b"", {}, AuthenticationError),
    (403, b'{"code": 20005, "message": "Account not active", "status": 403}', {}, AuthenticationError),
    (400, b'{"code": 21659, "message": "not a Twilio number", "status": 400}', {}, ConfigurationError),
    (404, b'{"code": 20404, "message": "not found", "status": 404}', {}, ConfigurationError),
    (429, b'{"code": 20429, "message": "Too Many Requests", "status": 429}',
     {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, RateLimited),
    (502, b"<html>Bad Gateway</html>", {}, ProviderError),
])
def test_twilio_error_mapping(status, body, headers, error):
    err = twilio_error(status, headers, body)
    assert type(err) is error and err.status == status and str(err).startswith(f"twilio HTTP {status}")
    if error is RateLimited:
        assert err.retry_after == 0.0  # an HTTP-date in the past: no wait


def test_twilio_configuration_errors():
    base = {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+15005550006"}
    cases = [
        ({"account_sid": None}, "account_sid"),
        ({"account_sid": "AC123"}, "account_sid"),
        ({"auth_token": None}, "auth_token"),
        ({"api_key_sid": KEY_SID, "api_key_secret": KEY_SECRET}, "not both"),
        ({"auth_token": None, "api_key_sid": KEY_SID}, "api_key_secret"),
        ({"auth_token": None, "api_key_sid": "SK1", "api_key_secret": "x"}, "api_key_sid"),
        ({"from": None}, "'from' or 'messaging_service_sid'"),
        ({"from": "0301234567"}, "bad 'from'"),
        ({"messaging_service_sid": "MG1"}, "messaging_service_sid"),
        ({"max_segments": 0}, "max_segments"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"status_callback": "not a url"}, "status_callback"),
    ]
    for change, match in cases:
        settings = {k: v for k, v in {**base, **change}.items() if v is not None}
        with pytest.raises(ConfigurationError, match=match):
            TwilioSmsProvider("t", settings)
    p = TwilioSmsProvider("t", base)
    assert p.channel == "sms" and p.account_url == f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}"
    assert p.settings["auth_token"] == "[redacted]"


async def test_twilio_credentials_an_answer_echoes_are_scrubbed():
    """A server that quotes the request's Authorization header, and the
    credentials in it, back in its error: neither reaches the error message."""
    async def echo(request):
        auth = request.headers["Authorization"]
        decoded = base64.b64decode(auth.removeprefix("Basic ")).decode()
        return web.json_response({"code": 21211, "message": f"refused {auth} ({decoded})"}, status=400)

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    async with TestServer(app) as server:
        p = twilio(base_url=str(server.make_url("")).rstrip("/"), auth_token=None, api_key_sid=KEY_SID,
                   api_key_secret=KEY_SECRET)
        try:
            err = await refused(p, task(), InvalidMessage)
        finally:
            await p.close()
    basic = base64.b64encode(f"{KEY_SID}:{KEY_SECRET}".encode()).decode()
    assert str(err).endswith(f"refused Basic [redacted] ({KEY_SID}:[redacted])")
    assert KEY_SECRET not in str(err) and basic not in str(err)
    assert p.settings["api_key_secret"] == "[redacted]" and KEY_SECRET not in repr(p.settings)


async def test_sink_speaks_twilio_to_any_client(twilio_sink):
    url = f"{twilio_sink.url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data={"To": "+14155552671", "From": "+15005550006", "Body": "hi"}) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")
            assert (await resp.json())["code"] == 20003
        auth = aiohttp.BasicAuth(ACCOUNT, TOKEN)
        async with s.post(url, data={"To": "+14155552671", "Body": "hi"}, auth=auth) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 21603
        async with s.post(url, data={"To": "+14155552671", "From": "+15005550006", "Body": "x" * 1601},
                          auth=auth) as resp:
            assert (await resp.json()) == {"code": 21617, "message": "The concatenated message body exceeds the "
                                           "1600 character limit.", "more_info":
                                           "https://www.twilio.com/docs/errors/21617", "status": 400}
        async with s.post(url, data={"To": "+14155552671", "From": "+15005550006", "Body": "€" * 81},
                          auth=auth) as resp:
            doc = await resp.json()
            assert resp.status == 201 and doc["num_segments"] == "2" and doc["status"] == "queued"
            assert doc["sid"].startswith("SM") and doc["account_sid"] == ACCOUNT
    assert twilio_sink.stats() == {"sink": "twilio", "messages": 1, "calls": 0, "segments": 2, "rejected": 3,
                                   "failed": 0}


# -- MessageBird -----------------------------------------------------------------

@pytest.fixture
async def mb_sink():
    async with serving(MessageBirdSink(MB_KEY, keep_bodies=True)) as s:
        yield s


def messagebird(sink: MessageBirdSink | None = None, **settings) -> MessageBirdProvider:
    base = {"access_key": MB_KEY, "originator": "Tidings", "timeout_s": 2}
    return MessageBirdProvider("mb-test", pointed_at(sink, base, settings))


@pytest.fixture
async def mb(mb_sink):
    async with started(messagebird(mb_sink)) as p:
        yield p


async def test_messagebird_sends_the_documented_body(mb_sink, mb):
    receipt = await mb.send(task("+31 6 12345678"))
    await mb.send(task("+31612345678", text="Код: 123 ✅"))
    assert receipt.message_id is not None and len(receipt.message_id) == 32
    assert mb_sink.bodies == [
        {"originator": "Tidings", "recipients": [31612345678], "body": "Your code is 123456", "datacoding": "plain",
         "reference": "nid-1"},
        {"originator": "Tidings", "recipients": [31612345678], "body": "Код: 123 ✅", "datacoding": "unicode",
         "reference": "nid-1"},
    ]
    assert (mb_sink.messages, mb_sink.recipients, mb_sink.rejected) == (2, 2, 0)


async def test_messagebird_numeric_originator_loses_its_plus(mb_sink):
    p = messagebird(mb_sink, originator="+31 970 1234 5678")
    try:
        await p.send(task())
    finally:
        await p.close()
    assert mb_sink.bodies[0]["originator"] == "3197012345678"


async def test_messagebird_wrong_key_is_authentication_error_without_the_key(mb_sink):
    wrong = "live_wr0ng_key"
    p = messagebird(mb_sink, access_key=wrong)
    try:
        err = await refused(p, task(), AuthenticationError)
    finally:
        await p.close()
    assert err.status == 401 and "code 2: Request not allowed" in str(err)
    assert wrong not in str(err) and wrong not in repr(p.settings) and mb_sink.rejected == 1


async def test_messagebird_invalid_recipient_is_invalid_message(mb_sink, mb):
    err = await refused(mb, task("+15550001234"), InvalidMessage)
    assert err.status == 422 and "no (correct) recipients found" in str(err) and "parameter recipients" in str(err)


async def test_messagebird_no_balance_is_provider_error(mb_sink, mb):
    mb_sink.balance = 1
    await mb.send(task())
    err = await refused(mb, task(), ProviderError)
    assert "code 25: Not enough balance" in str(err)


async def test_messagebird_429_and_5xx(mb_sink, mb):
    mb_sink.fail_status, mb_sink.fail_next, mb_sink.retry_after = 429, 1, "3"
    err = await refused(mb, task(), RateLimited)
    assert err.retry_after == 3.0 and err.status == 429
    mb_sink.fail_status, mb_sink.fail_next = 503, 1
    err = await refused(mb, task(), ProviderError)
    assert err.status == 503 and "Internal error" in str(err)
    await mb.send(task())
    assert (mb_sink.failed, mb_sink.messages) == (2, 1)


async def test_messagebird_checks_before_sending(mb_sink, mb):
    for t, match in ((task("0612345678"), "not international"), (task(text="a" * 1531), "11 segments"),
                     (task(text=None), "needs text")):
        with pytest.raises(InvalidMessage, match=match):
            await mb.send(t)
    assert mb_sink.messages == 0 and mb_sink.rejected == 0


@pytest.mark.parametrize("status, errors, error", [
    (422, [{"code": 9, "description": "originator is required", "parameter": "originator"}], ConfigurationError),
    (422, [{"code": 10, "description": "originator is invalid", "parameter": "originator"}], ConfigurationError),
    (422, [{"code": 2, "description": "Request not allowed", "parameter": "access_key"},
           {"code": 9, "description": "no (correct) recipients found", "parameter": "recipients"}],
     AuthenticationError),
    (422, [{"code": 10, "description": "body is invalid", "parameter": "body"}], InvalidMessage),
    (422, [{"code": 99, "description": "Internal error", "parameter": None}], ProviderError),
    (404, [{"code": 20, "description": "message not found", "parameter": None}], ConfigurationError),
    (405, [], ConfigurationError),
    (400, [], InvalidMessage),
    (408, [], NetworkError),
])
def test_messagebird_error_mapping(status, errors, error):
    body = msgspec.json.encode({"errors": errors}) if errors else b"plain text"
    err = messagebird_error(status, {}, body)
    assert type(err) is error and err.status == status and str(err).startswith(f"messagebird HTTP {status}")


def test_messagebird_configuration_errors():
    for settings, match in (({"originator": "x"}, "access_key"), ({"access_key": MB_KEY}, "originator"),
                            ({"access_key": MB_KEY, "originator": "Tidings Alerts"}, "originator"),
                            ({"access_key": MB_KEY, "originator": "T", "base_url": "x"}, "base_url"),
                            ({"access_key": MB_KEY, "originator": "T", "max_segments": 0}, "max_segments")):
        with pytest.raises(ConfigurationError, match=match):
            MessageBirdProvider("mb", settings)
    assert MessageBirdProvider("mb", {"access_key": MB_KEY, "originator": "T"}).endpoint == \
        "https://rest.messagebird.com/messages"


# -- Vonage -----------------------------------------------------------------------

@pytest.fixture
async def vonage_sink():
    async with serving(VonageSink(VONAGE_KEY, VONAGE_SECRET, keep_bodies=True)) as s:
        yield s


def vonage(sink: VonageSink | None = None, **settings) -> VonageSmsProvider:
    base = {"api_key": VONAGE_KEY, "api_secret": VONAGE_SECRET, "from": "Tidings", "timeout_s": 2}
    return VonageSmsProvider("vonage-test", pointed_at(sink, base, settings))


@pytest.fixture
async def vo(vonage_sink):
    async with started(vonage(vonage_sink)) as p:
        yield p


async def test_vonage_sends_the_documented_form(vonage_sink, vo):
    receipt = await vo.send(task("+44 7700 900000"))
    assert receipt.message_id == vonage_sink.last_id
    assert vonage_sink.bodies == [{"api_key": VONAGE_KEY, "api_secret": "[redacted]", "from": "Tidings",
                                   "to": "447700900000", "text": "Your code is 123456", "client-ref": "nid-1"}]
    assert (vonage_sink.messages, vonage_sink.segments, vonage_sink.garbled) == (1, 1, 0)


async def test_vonage_unicode_long_message_and_callback(vonage_sink):
    p = vonage(vonage_sink, status_callback="https://tidings.test/dlr/vonage", **{"from": "+44 7700 900001"})
    try:
        receipt = await p.send(task(text="😀" * 40))  # 80 UTF-16 units: two segments
    finally:
        await p.close()
    body = vonage_sink.bodies[0]
    assert body["type"] == "unicode" and body["from"] == "447700900001"
    assert body["callback"] == "https://tidings.test/dlr/vonage"
    assert vonage_sink.segments == 2 and vonage_sink.garbled == 0
    assert receipt.message_id is not None and receipt.message_id != vonage_sink.last_id  # the first part's id


async def test_vonage_wrong_secret_is_authentication_error_without_it(vonage_sink):
    wrong = "wr0ng-vonage-secret"
    p = vonage(vonage_sink, api_secret=wrong)
    try:
        err = await refused(p, task(), AuthenticationError)
    finally:
        await p.close()
    assert "status 4" in str(err) and "Bad Credentials" in str(err)
    assert wrong not in str(err) and wrong not in repr(p.settings)


async def test_vonage_recipient_refusals(vonage_sink, vo):
    vonage_sink.barred.add("447700900002")
    vonage_sink.deactivated.add("447700900003")
    err = await refused(vo, task("+15550001234"), InvalidMessage)
    assert "status 6" in str(err) and "Unroutable" in str(err)
    err = await refused(vo, task("+447700900002"), InvalidMessage)
    assert "status 7" in str(err)
    err = await refused(vo, task("+447700900003"), AddressGone)
    assert "status 33" in str(err) and err.kind == "address_gone"
    vonage_sink.whitelist = {"447700900000"}
    err = await refused(vo, task("+447700900004"), InvalidMessage)
    assert "status 29" in str(err)
    assert vonage_sink.rejected == 4 and vonage_sink.messages == 0


@pytest.mark.parametrize("code, error", [("1", RateLimited), ("5", ProviderError), ("8", AuthenticationError),
                                         ("9", ProviderError), ("15", ConfigurationError), ("99", ProviderError)])
async def test_vonage_status_codes_in_a_200_answer(vonage_sink, vo, code, error):
    vonage_sink.fail_status, vonage_sink.fail_code, vonage_sink.fail_next = 200, code, 1
    err = await refused(vo, task(), error)
    assert f"status {code}" in str(err) and err.status == 200
    if code == "1":
        assert err.retry_after == 1.0
    await vo.send(task())


async def test_vonage_http_errors(vonage_sink, vo):
    vonage_sink.fail_status, vonage_sink.fail_next, vonage_sink.retry_after = 429, 1, "2"
    err = await refused(vo, task(), RateLimited)
    assert err.retry_after == 2.0 and err.status == 429
    vonage_sink.fail_status, vonage_sink.fail_next = 500, 1
    err = await refused(vo, task(), ProviderError)
    assert err.status == 500
    p = vonage(base_url=f"{vonage_sink.url}/wrong")
    try:
        err = await refused(p, task(), ConfigurationError)
    finally:
        await p.close()
    assert err.status == 404 and VONAGE_SECRET not in str(err)


def test_vonage_status_table_and_unreadable_answers():
    assert {k: v[0] for k, v in STATUS_ERRORS.items()} == {
        "1": RateLimited, "2": InvalidMessage, "3": InvalidMessage, "4": AuthenticationError, "5": ProviderError,
        "6": InvalidMessage, "7": InvalidMessage, "8": AuthenticationError, "9": ProviderError, "10": RateLimited,
        "11": ConfigurationError, "12": InvalidMessage, "14": AuthenticationError, "15": ConfigurationError,
        "22": InvalidMessage, "23": ConfigurationError, "29": InvalidMessage, "32": ConfigurationError,
        "33": AddressGone,
    }
    assert vonage_error("10", "binds").retry_after is None
    p = vonage()
    with pytest.raises(ProviderError, match="without a messages list"):
        p._receipt(b"<html>")
    with pytest.raises(ProviderError, match="without a messages list"):
        p._receipt(b'{"message-count": "0", "messages": []}')
    assert p._receipt(b'{"messages": [{"status": "0", "message-id": "ID1"}]}').message_id == "ID1"


def test_vonage_configuration_errors():
    for settings, match in (({"api_secret": "s", "from": "T"}, "api_key"), ({"api_key": "k", "from": "T"}, "api_key"),
                            ({"api_key": "k", "api_secret": "s"}, "from"),
                            ({"api_key": "k", "api_secret": "s", "from": "T", "status_callback": "x"},
                             "status_callback")):
        with pytest.raises(ConfigurationError, match=match):
            VonageSmsProvider("v", settings)
    assert vonage().endpoint == "https://rest.nexmo.com/sms/json"


# -- registry lines proposed to the lead -------------------------------------------

@pytest.mark.parametrize("type_name, target, settings", [
    ("twilio_sms", "providers.sms.twilio:TwilioSmsProvider",
     {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+15005550006"}),
    ("messagebird", "providers.sms.messagebird:MessageBirdProvider", {"access_key": MB_KEY, "originator": "T"}),
    ("vonage", "providers.sms.vonage:VonageSmsProvider", {"api_key": "k", "api_secret": "s", "from": "T"}),
    ("twilio_voice", "providers.voice.twilio:TwilioVoiceProvider",
     {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+15005550006"}),
])
def test_registry_targets_resolve(monkeypatch, type_name, target, settings):
    monkeypatch.setitem(PROVIDER_TYPES, type_name, target)
    p = create(type_name, "via-registry", settings)
    assert p.name == "via-registry" and p.channel == ("voice" if type_name == "twilio_voice" else "sms")
