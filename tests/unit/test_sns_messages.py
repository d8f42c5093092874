"""SNS message signatures and SES events (providers.tracking.sns), pure: the
loopback topic (sandbox.sns.SnsTopic) signs, nothing is served."""

import msgspec
import pytest

from providers.tracking import PayloadError, SignatureError
from providers.tracking.sns import canonical, parse_sns, ses_events, sms_inbound, sns_url_ok, verify_sns
from sandbox.sns import SnsTopic

TOPIC = SnsTopic()
TOPIC.port = 1  # its URLs name a port; nothing listens


def parsed(doc: dict):
    return parse_sns(msgspec.json.encode(doc))


def test_the_canonical_text_follows_snss_field_order_and_skips_what_is_absent():
    m = parsed({"Type": "Notification", "MessageId": "id", "TopicArn": "arn", "Message": "hi", "Timestamp": "t",
                "SignatureVersion": "1", "Signature": "", "SigningCertURL": "u"})
    assert canonical(m) == b"Message\nhi\nMessageId\nid\nTimestamp\nt\nTopicArn\narn\nType\nNotification\n"
    with_subject = parsed({**msgspec.to_builtins(m), "Type": "Notification", "Subject": "s", "MessageId": "id",
                           "TopicArn": "arn", "Message": "hi", "Timestamp": "t", "SignatureVersion": "1",
                           "Signature": "", "SigningCertURL": "u"})
    assert b"Subject\ns\nTimestamp" in canonical(with_subject)


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_message_verifies_and_a_changed_one_does_not(version):
    topics = frozenset([TOPIC.topic_arn])
    for kind in ("Notification", "SubscriptionConfirmation"):
        doc = TOPIC.message(kind, "hello", version=version)
        verify_sns(parsed(doc), TOPIC.cert_pem, topics)
        for change in ({"Message": "hellO"}, {"Timestamp": "2020-01-01T00:00:00.000Z"}, {"Signature": "AAAA"},
                       {"SignatureVersion": "3"}):
            with pytest.raises(SignatureError):
                verify_sns(parsed({**doc, **change}), TOPIC.cert_pem, topics)
    with pytest.raises(SignatureError, match="topic"):
        verify_sns(parsed(TOPIC.message("Notification", "x")), TOPIC.cert_pem, frozenset(["arn:other"]))
    with pytest.raises(SignatureError, match="too far"):
        verify_sns(parsed(TOPIC.message("Notification", "x")), TOPIC.cert_pem, topics, now=0)


def test_certificates_and_subscribe_urls_come_only_from_the_topics_own_sns_host():
    arn = "arn:aws:sns:us-east-1:123456789012:events"
    cert = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem"
    assert sns_url_ok(cert, arn, "cert")
    assert sns_url_ok("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-ab.pem",
                      "arn:aws-cn:sns:cn-north-1:123456789012:events", "cert")
    for url in ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-ab.pem",  # not HTTPS
                "https://sns.s3.amazonaws.com/SimpleNotificationService-ab.pem",  # an S3 bucket named sns
                "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-ab.pem",  # another region's
                "https://sns.us-east-1.amazonaws.com.evil.test/SimpleNotificationService-ab.pem",
                "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-ab.pem",
                "https://sns.us-east-1.amazonaws.com:x/SimpleNotificationService-ab.pem",  # no port at all
                "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-ab.pem",
                "https://sns.us-east-1.amazonaws.com/other.pem",
                cert + "?a=1"):
        assert not sns_url_ok(url, arn, "cert"), url
    assert not sns_url_ok(cert, "not-an-arn", "cert")
    subscribe = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=t"
    assert sns_url_ok(subscribe, arn, "subscribe") and not sns_url_ok(cert, arn, "subscribe")
    loopback = "http://127.0.0.1:9/"
    assert sns_url_ok("http://127.0.0.1:9/cert.pem", arn, "cert", prefix=loopback)
    for url in ("http://127.0.0.1:10/cert.pem", "http://127.0.0.1:9@evil.test/cert.pem", "https://127.0.0.1:9/c"):
        assert not sns_url_ok(url, arn, "cert", prefix=loopback), url
    assert not sns_url_ok("http://evil.test/cert.pem", arn, "cert", prefix="http://evil.test/")  # loopback only


def test_a_subscription_confirmations_canonical_text_names_its_url_and_token_and_unknown_types_are_refused():
    m = parsed({"Type": "SubscriptionConfirmation", "MessageId": "id", "TopicArn": "arn", "Message": "hi",
                "Timestamp": "t", "SignatureVersion": "1", "Signature": "", "SigningCertURL": "u",
                "SubscribeURL": "https://s/?Action=ConfirmSubscription", "Token": "tok"})
    assert canonical(m) == (b"Message\nhi\nMessageId\nid\nSubscribeURL\nhttps://s/?Action=ConfirmSubscription\n"
                            b"Timestamp\nt\nToken\ntok\nTopicArn\narn\nType\nSubscriptionConfirmation\n")
    with pytest.raises(PayloadError, match="type"):
        parsed({**msgspec.to_builtins(m), "Type": "Foo", "MessageId": "id", "TopicArn": "arn", "Message": "hi",
                "Timestamp": "t", "SignatureVersion": "1", "Signature": "", "SigningCertURL": "u"})


def test_ses_events_become_tracking_events():
    mail = {"messageId": "m1", "tags": {"notification_id": ["n1"], "category": ["orders"]}}
    bounce = {"eventType": "Bounce", "mail": mail, "bounce": {
        "bounceType": "Permanent", "bounceSubType": "General", "timestamp": "2023-11-14T22:13:20.000Z",
        "bouncedRecipients": [{"emailAddress": "a@x.test", "diagnosticCode": "550 5.1.1"}, {"emailAddress": "b@x.test"}]}}
    evs = ses_events(msgspec.json.encode(bounce).decode())
    assert [(e.address, e.status, e.hard, e.notification_id, e.provider_message_id) for e in evs] == [
        ("a@x.test", "bounced", True, "n1", "m1"), ("b@x.test", "bounced", True, "n1", "m1")]
    assert evs[0].at == 1_700_000_000.0 and "550 5.1.1" in evs[0].detail
    soft = {**bounce, "bounce": {**bounce["bounce"], "bounceType": "Transient"}}
    assert {(e.status, e.hard) for e in ses_events(msgspec.json.encode(soft).decode())} == {(None, False)}
    complaint = {"notificationType": "Complaint", "mail": mail,  # an identity's notification, not an event
                 "complaint": {"complainedRecipients": [{"emailAddress": "a@x.test"}]}}
    assert [(e.status, e.hard) for e in ses_events(msgspec.json.encode(complaint).decode())] == [("complained", True)]
    not_spam = {**complaint, "complaint": {**complaint["complaint"], "complaintFeedbackType": "not-spam"}}
    assert [(e.status, e.hard) for e in ses_events(msgspec.json.encode(not_spam).decode())] == [(None, False)]
    assert ses_events(msgspec.json.encode({"eventType": "Open", "mail": mail}).decode()) == []
    for bad in ("not json", "[]", '{"eventType": "Bounce"}'):
        with pytest.raises(PayloadError):
            ses_events(bad)


def test_inbound_texts_give_the_number_the_text_and_the_id():
    doc = {"originationNumber": "+14155550101", "destinationNumber": "+14155550100", "messageKeyword": "STOP",
           "messageBody": "Stop", "inboundMessageId": "cae173d2"}
    assert sms_inbound(msgspec.json.encode(doc).decode()) == ("+14155550101", "Stop", "cae173d2")
    for bad in ("not json", "[]", msgspec.json.encode({**doc, "inboundMessageId": ""}).decode(),
                msgspec.json.encode({k: v for k, v in doc.items() if k != "messageBody"}).decode()):
        with pytest.raises(PayloadError):
            sms_inbound(bad)


def test_deeply_nested_bodies_are_payload_errors_not_crashes():
    deep = "[" * 100_000 + "]" * 100_000
    for parse in (lambda: parse_sns(('{"a":' * 5000 + "1" + "}" * 5000).encode()), lambda: ses_events(deep),
                  lambda: sms_inbound(deep)):
        with pytest.raises(PayloadError):
            parse()
