"""SnsSmsProvider against a loopback SNS that checks AWS Signature Version 4
as SNS does (sandbox.sns.SnsSink, botocore's signer on both sides)."""

import pytest
from provider_helpers import serving, started

from policy.types import Content, DeliveryTask
from providers.errors import AuthenticationError, ConfigurationError, InvalidMessage, ProviderError, RateLimited
from providers.registry import create
from providers.sms.sns import SnsSmsProvider, sns_error
from sandbox.sns import INVALID_PREFIX, SnsSink

KEY, SECRET = "AKIDTIDINGSTEST00001", "tidings/sns/secret/access/key/0123456789"


def task(address: str = "+14155552671", category: str = "security", text: str = "Your code is 123456") -> DeliveryTask:
    return DeliveryTask(notification_id="nid-1", user_id="u1", channel="sms", category=category, address=address,
                        content=Content(text=text))


@pytest.fixture
async def sink():
    async with serving(SnsSink(KEY, SECRET, "eu-west-1", keep_bodies=True)) as s:
        yield s


def sns(sink: SnsSink, **settings) -> SnsSmsProvider:
    return SnsSmsProvider("sns-test", {"access_key_id": KEY, "secret_access_key": SECRET, "region": "eu-west-1",
                                       "base_url": sink.url, "timeout_s": 2, **settings})


async def test_publishes_a_signed_sms_with_its_type_and_sender(sink):
    async with started(sns(sink, sender_id="Tidings")) as p:
        receipt = await p.send(task())
        await p.send(task(category="marketing", text="20% off"))
    assert receipt.message_id and receipt.message_id != sink.last_id  # the second one's is last
    first, second = sink.bodies
    assert (first["Action"], first["PhoneNumber"], first["Message"]) == ("Publish", "+14155552671",
                                                                         "Your code is 123456")
    attrs = {first[f"MessageAttributes.entry.{n}.Name"]: first[f"MessageAttributes.entry.{n}.Value.StringValue"]
             for n in (1, 2)}
    assert attrs == {"AWS.SNS.SMS.SMSType": "Transactional", "AWS.SNS.SMS.SenderID": "Tidings"}
    assert second["MessageAttributes.entry.1.Value.StringValue"] == "Promotional"  # a marketing text
    assert (sink.messages, sink.rejected) == (2, 0)


async def test_a_signature_sns_would_refuse_is_an_authentication_error(sink):
    for settings in ({"secret_access_key": "not-the-secret-access-key"}, {"access_key_id": "AKIDUNKNOWN00000000"},
                     {"region": "us-east-1"}):  # signed for another region than the endpoint's
        async with started(sns(sink, **settings)) as p:
            with pytest.raises(AuthenticationError) as exc:
                await p.send(task())
        assert exc.value.status == 403 and "not-the-secret" not in str(exc.value)
    assert sink.messages == 0 and sink.rejected == 3


async def test_temporary_credentials_send_their_session_token(sink):
    async with started(sns(sink, session_token="FwoGZXIvYXdzEXAMPLETOKEN")) as p:
        await p.send(task())  # the sink refuses a token that is not among the signed headers
    assert sink.messages == 1 and sink.last_token == "FwoGZXIvYXdzEXAMPLETOKEN"


async def test_refusals_and_failures_map_onto_the_error_tree(sink):
    sink.opted_out.add("+14155552672")
    async with started(sns(sink)) as p:
        with pytest.raises(InvalidMessage, match="InvalidParameter"):
            await p.send(task(INVALID_PREFIX + "1234"))
        assert (await p.send(task("+14155552672"))).message_id  # SNS takes it and drops it: no error to see
        assert sink.dropped_opted_out == 1
        with pytest.raises(InvalidMessage):  # refused before any request
            await p.send(task("not a number"))
        for status, error in ((500, ProviderError), (503, ProviderError), (429, RateLimited)):
            sink.fail_status, sink.fail_next = status, 1
            with pytest.raises(error):
                await p.send(task())
        await p.send(task())
    assert sink.messages == 2 and sink.rejected == 1


def test_error_answers_without_a_known_code_fall_back_to_the_status():
    assert isinstance(sns_error(502, {}, b"<html>bad gateway</html>"), ProviderError)
    sender = b"<ErrorResponse><Error><Code>InvalidParameter</Code><Message>Invalid parameter: SenderID</Message>"
    assert isinstance(sns_error(400, {}, sender + b"</Error></ErrorResponse>"), ConfigurationError)
    skew = b"<ErrorResponse><Error><Code>RequestExpired</Code></Error></ErrorResponse>"
    assert isinstance(sns_error(400, {}, skew), AuthenticationError)
    assert isinstance(sns_error(403, {}, b"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>"),
                      AuthenticationError)


def test_configuration_is_checked_and_secrets_are_never_shown():
    base = {"access_key_id": KEY, "secret_access_key": SECRET, "region": "eu-west-1"}
    p = create("sns", "sns-x", base)
    assert isinstance(p, SnsSmsProvider) and p.endpoint == "https://sns.eu-west-1.amazonaws.com/"
    assert SECRET not in repr(p.settings)
    for bad in ({"region": "mars"}, {"secret_access_key": ""}, {"sms_type": "Bulk"}, {"sender_id": "Too-Long-Sender"},
                {"sender_id": "12345"}, {"origination_number": "MyBrand"}, {"origination_number": "12"},
                {"promotional_categories": "marketing"}, {"base_url": "ftp://x"}):
        with pytest.raises(ConfigurationError):
            SnsSmsProvider("sns-x", {**base, **bad})
