"""SesEmailProvider (SES API v2 SendEmail) against a loopback SES that checks
AWS Signature Version 4 as SES does (sandbox.ses.SesSink)."""

import pytest
from provider_helpers import serving, started

from policy.types import Content, DeliveryTask
from providers.email.ses import SesEmailProvider, ses_error
from providers.errors import AuthenticationError, ConfigurationError, InvalidMessage, ProviderError, RateLimited
from providers.registry import create
from sandbox.ses import SesSink

KEY, SECRET = "AKIDTIDINGSSES000001", "tidings/ses/secret/access/key/0123456789"
CONTENT = Content(subject="Your order shipped", text="It arrives Tuesday", html="<p>It arrives <b>Tuesday</b></p>")


def task(category: str = "orders", address: str = "ana@example.com", unsubscribe: str | None = None) -> DeliveryTask:
    return DeliveryTask(notification_id="7c9e6679-7425-40de-944b-e07fc1f90ae7", user_id="u1", channel="email",
                        category=category, address=address, content=CONTENT, unsubscribe_url=unsubscribe)


@pytest.fixture
async def sink():
    async with serving(SesSink(KEY, SECRET, "eu-central-1", keep_bodies=True)) as s:
        yield s


def ses(sink: SesSink, **settings) -> SesEmailProvider:
    return SesEmailProvider("ses-test", {"access_key_id": KEY, "secret_access_key": SECRET, "region": "eu-central-1",
                                         "base_url": sink.url, "sender": "Tidings <noreply@tidings.test>",
                                         "configuration_set": "tidings", "timeout_s": 2, **settings})


async def test_sends_the_documented_signed_document_with_tags_and_one_click_headers(sink):
    async with started(ses(sink)) as p:
        receipt = await p.send(task(unsubscribe="https://t.example/u/abc"))
        await p.send(task(category="security", unsubscribe="https://t.example/u/def"))  # transactional: no header
    assert receipt.message_id and sink.messages == 2 and sink.rejected == 0
    first, second = sink.bodies
    assert first["FromEmailAddress"] == "Tidings <noreply@tidings.test>"
    assert first["Destination"] == {"ToAddresses": ["ana@example.com"]} and first["ConfigurationSetName"] == "tidings"
    simple = first["Content"]["Simple"]
    assert simple["Subject"] == {"Data": "Your order shipped", "Charset": "UTF-8"}
    assert simple["Body"]["Text"]["Data"] == "It arrives Tuesday" and "<b>" in simple["Body"]["Html"]["Data"]
    assert simple["Headers"] == [{"Name": "List-Unsubscribe", "Value": "<https://t.example/u/abc>"},
                                 {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}]
    assert first["EmailTags"] == [{"Name": "notification_id", "Value": "7c9e6679-7425-40de-944b-e07fc1f90ae7"},
                                  {"Name": "category", "Value": "orders"}]
    assert "Headers" not in second["Content"]["Simple"]


async def test_a_signature_ses_would_refuse_is_an_authentication_error(sink):
    for settings in ({"secret_access_key": "not-the-secret"}, {"access_key_id": "AKIDNOTKNOWN0000000"},
                     {"region": "us-west-2"}):
        async with started(ses(sink, **settings)) as p:
            with pytest.raises(AuthenticationError) as exc:
                await p.send(task())
        assert exc.value.status == 403 and "not-the-secret" not in str(exc.value)
    assert (sink.messages, sink.rejected) == (0, 3)


async def test_refusals_and_failures_map_onto_the_error_tree(sink):
    async with started(ses(sink, sender="someone@unverified.test")) as p:
        with pytest.raises(ConfigurationError, match="MessageRejected"):  # our sender: the next provider may send
            await p.send(task())
    async with started(ses(sink, configuration_set="missing")) as p:
        with pytest.raises(ConfigurationError, match="NotFoundException"):
            await p.send(task())
    async with started(ses(sink)) as p:
        with pytest.raises(InvalidMessage):  # refused before any request
            await p.send(task(address="not an address"))
        for status, error in ((429, RateLimited), (500, ProviderError), (503, ProviderError)):
            sink.fail_status, sink.fail_next = status, 1
            with pytest.raises(error):
                await p.send(task())
        await p.send(task())
    assert sink.messages == 1


def test_error_answers_are_read_from_the_header_or_the_body_else_the_status():
    assert isinstance(ses_error(400, {"X-Amzn-ErrorType": "AccountSuspendedException:http://x"}, b"{}"),
                      AuthenticationError)
    assert isinstance(ses_error(400, {}, b'{"__type": "com.amazon#LimitExceededException"}'), RateLimited)
    assert isinstance(ses_error(502, {}, b"<html>"), ProviderError)


def test_configuration_is_checked_and_secrets_are_never_shown():
    base = {"access_key_id": KEY, "secret_access_key": SECRET, "region": "eu-central-1", "sender": "a@tidings.test"}
    p = create("ses", "ses-x", base)
    assert isinstance(p, SesEmailProvider)
    assert p.endpoint == "https://email.eu-central-1.amazonaws.com/v2/email/outbound-emails"
    assert SECRET not in repr(p.settings)
    for bad in ({"sender": "two@a.test, b@b.test"}, {"sender": ""}, {"sender": "noreply@bücher.test"}, {"region": "x"}, {"configuration_set": "a b"},
                {"secret_access_key": None}):
        with pytest.raises(ConfigurationError):
            SesEmailProvider("ses-x", {**base, **bad})
