"""TwilioVoiceProvider against the Twilio look-alike on loopback
(sandbox.twilio), its TwiML and its locale -> language mapping."""

import xml.etree.ElementTree as ET

import aiohttp
import pytest
from hypothesis import given, settings, strategies as st
from provider_helpers import pointed_at, refused, serving, started

from engine.embedded import free_port
from policy.types import Content, DeliveryTask
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.voice.twilio import ALICE_LANGUAGES, MAX_TWIML_CHARS, TwilioVoiceProvider, twilio_language, twiml
from sandbox.twilio import TwilioSink

ACCOUNT = "AC" + "e5" * 16
TOKEN = "voice-auth-t0ken-s3cret"
CALLER = "+15005550006"


def task(text: str | None = "Your package has arrived.", *, address: str = "+14155552671", locale: str = "en",
         subject: str | None = None) -> DeliveryTask:
    return DeliveryTask(notification_id="nid-1", user_id="u1", channel="voice", category="delivery",
                        address=address, content=Content(subject=subject, text=text), locale=locale)


@pytest.fixture
async def sink():
    async with serving(TwilioSink(ACCOUNT, TOKEN, keep_bodies=True)) as s:
        yield s


def make(sink: TwilioSink | None = None, **settings) -> TwilioVoiceProvider:
    base = {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": CALLER, "timeout_s": 2}
    return TwilioVoiceProvider("voice-test", pointed_at(sink, base, settings))


@pytest.fixture
async def provider(sink):
    async with started(make(sink)) as p:
        yield p


async def test_call_is_placed_with_inline_twiml(sink, provider):
    receipt = await provider.send(task(locale="de", text="Ihr Paket ist da."))
    assert receipt.message_id == sink.last_sid and receipt.message_id.startswith("CA")
    assert sink.bodies == [{
        "To": "+14155552671", "From": CALLER,
        "Twiml": '<Response><Say language="de-DE" voice="alice">Ihr Paket ist da.</Say></Response>',
    }]
    assert (sink.calls, sink.messages, sink.rejected) == (1, 0, 0)


async def test_text_is_escaped_so_it_cannot_add_verbs(sink, provider):
    text = 'Code <b>42</b> & "more" </Say><Play>http://evil.test/a.mp3</Play><Say>'
    await provider.send(task(text))
    doc = ET.fromstring(sink.bodies[0]["Twiml"])  # the sink refuses TwiML that does not parse, too
    assert [child.tag for child in doc] == ["Say"] and doc[0].text == text


async def test_subject_fallback_voices_languages_and_callback(sink):
    p = make(sink, voice="Polly.Joanna", voices={"de-DE": "Polly.Marlene"}, languages={"en": "en-GB"},
             status_callback="https://tidings.test/status/voice")
    try:
        await p.send(task(None, subject="Security alert", locale="en"))
        await p.send(task("Achtung", locale="de_AT"))
    finally:
        await p.close()
    first, second = sink.bodies
    assert first["Twiml"] == '<Response><Say language="en-GB" voice="Polly.Joanna">Security alert</Say></Response>'
    assert second["Twiml"] == '<Response><Say language="de-DE" voice="Polly.Marlene">Achtung</Say></Response>'
    assert first["StatusCallback"] == second["StatusCallback"] == "https://tidings.test/status/voice"


@pytest.mark.parametrize("locale, language", [
    ("en", "en-US"), ("en-GB", "en-GB"), ("en_gb", "en-GB"), ("en-NZ", "en-US"), ("de", "de-DE"),
    ("de-AT", "de-DE"), ("fr-CA", "fr-CA"), ("fr-BE", "fr-FR"), ("pt", "pt-BR"), ("pt-PT", "pt-PT"),
    ("es-MX", "es-MX"), ("zh-Hant", "zh-TW"), ("zh-Hant-HK", "zh-HK"), ("zh", "zh-CN"), ("no", "nb-NO"),
    ("nb-NO", "nb-NO"), ("tr-TR", "en-US"), ("", "en-US"), ("xx", "en-US"),
])
def test_locale_to_twilio_language(locale, language):
    assert twilio_language(locale) == language


def test_language_overrides_and_default():
    assert twilio_language("en-AU", {"en": "en-GB"}) == "en-GB"           # the bare language matches too
    assert twilio_language("en-AU", {"en-au": "en-AU", "en": "en-GB"}) == "en-AU"  # the full tag first
    assert twilio_language("tr", {}, default="tr-TR") == "tr-TR"
    assert make(languages={"PT_pt": "pt-PT"}).language("pt-pt") == "pt-PT"
    assert make(default_language="en-GB").language("xx") == "en-GB"
    assert all(twilio_language(lang) == lang for lang in ALICE_LANGUAGES)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.sampled_from(sorted(ALICE_LANGUAGES)), st.sampled_from(["alice", 'a"b<c&d']))
def test_twiml_is_one_say_with_exactly_the_text(text, language, voice):
    doc = ET.fromstring(twiml(text, language, voice))
    assert doc.tag == "Response" and [c.tag for c in doc] == ["Say"]
    say = doc[0]
    assert say.attrib == {"language": language, "voice": voice}
    # What XML 1.0 cannot carry is dropped, everything else survives byte for byte
    # (\r is normalized by any XML parser, so compare without it).
    kept = "".join(c for c in text if c in "\t\n\r" or (" " <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd")
                   or c >= "\U00010000")
    assert (say.text or "") == kept.replace("\r\n", "\n").replace("\r", "\n")


async def test_checks_before_calling(sink, provider):
    for t, match in ((task(address="415 555 2671"), "not international"), (task(None), "needs text"),
                     (task("\x00\x01 "), "needs text"), (task("a" * MAX_TWIML_CHARS), "at most 4000")):
        with pytest.raises(InvalidMessage, match=match):
            await provider.send(t)
    assert sum(sink.requests.values()) == 0


@pytest.mark.parametrize("to, code", [("+15550001234", 21211), ("+15005550001", 21217), ("+15005550003", 21215),
                                      ("+15005550004", 21216)])
async def test_recipient_refusals_are_invalid_message(sink, provider, to, code):
    err = await refused(provider, task(address=to), InvalidMessage)
    assert err.status == 400 and f"code {code}" in str(err) and sink.calls == 0


async def test_unverified_caller_id_is_configuration_error(sink):
    p = make(sink, **{"from": "+15005550007"})
    try:
        err = await refused(p, task(), ConfigurationError)
    finally:
        await p.close()
    assert "code 21210" in str(err)


async def test_wrong_token_is_authentication_error_without_it(sink):
    p = make(sink, auth_token="wr0ng-voice-token")
    try:
        err = await refused(p, task(), AuthenticationError)
    finally:
        await p.close()
    assert err.status == 401 and "wr0ng-voice-token" not in str(err) and TOKEN not in str(err)


async def test_rate_limit_and_server_errors(sink, provider):
    sink.fail_status, sink.fail_next, sink.retry_after = 429, 1, "4"
    err = await refused(provider, task(), RateLimited)
    assert err.retry_after == 4.0 and "code 20429" in str(err)
    sink.fail_status, sink.fail_next = 503, 1
    err = await refused(provider, task(), ProviderError)
    assert err.status == 503 and "code 20503" in str(err)
    await provider.send(task())
    assert (sink.failed, sink.calls) == (2, 1)


async def test_unreachable_is_network_error():
    p = make(base_url=f"http://127.0.0.1:{free_port()}")
    try:
        err = await refused(p, task(), NetworkError)
    finally:
        await p.close()
    assert TOKEN not in str(err)


def test_configuration_errors():
    for change, match in (({"from": None}, "caller ID"), ({"from": "Tidings"}, "caller ID"),
                          ({"voice": ""}, "voice"), ({"voices": {"de-DE": 1}}, "voices"),
                          ({"languages": ["en"]}, "languages"), ({"default_language": ""}, "default_language"),
                          ({"auth_token": None}, "auth_token")):
        settings = {k: v for k, v in {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": CALLER, **change}.items()
                    if v is not None}
        with pytest.raises(ConfigurationError, match=match):
            TwilioVoiceProvider("v", settings)
    p = make(**{"from": "001 500 555 0006"})
    assert p.channel == "voice" and p.from_ == CALLER and p.voice == "alice"


async def test_sink_refuses_calls_as_twilio_does(sink):
    url = f"{sink.url}/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
    auth = aiohttp.BasicAuth(ACCOUNT, TOKEN)
    cases = [({"From": CALLER, "Twiml": "<Response/>"}, 21201), ({"To": "+14155552671", "Twiml": "<Response/>"},
                                                                 21213),
             ({"To": "+14155552671", "From": CALLER}, 21205),
             ({"To": "+14155552671", "From": CALLER, "Twiml": "<Response><Say>a & b</Say></Response>"}, 12100),
             ({"To": "+14155552671", "From": CALLER, "Twiml": "<Response>" + "x" * 4000 + "</Response>"}, 32018)]
    async with aiohttp.ClientSession() as s:
        for form, code in cases:
            async with s.post(url, data=form, auth=auth) as resp:
                assert resp.status == 400 and (await resp.json())["code"] == code, form
        async with s.post(url, data={"To": "+14155552671", "From": CALLER, "Url": "https://tidings.test/twiml"},
                          auth=auth) as resp:
            doc = await resp.json()
            assert resp.status == 201 and doc["sid"].startswith("CA") and doc["status"] == "queued"
    assert (sink.rejected, sink.calls) == (5, 1)
