"""MessageBird's webhook signatures and status reports (providers.tracking.messagebird), pure."""

import pytest

from providers.tracking import PayloadError, SignatureError
from providers.tracking.messagebird import messagebird_event, messagebird_inbound, messagebird_jwt, verify_messagebird

# a vector of MessageBird's Python SDK tests (tests/test_request_validator/webhook_signature_test_data.json)
VECTOR_KEY = "36efdd1aace2e26cd490f0d951138253bef2f7c6d34d18981da781555cc4cebb"
VECTOR_URL = "https://example.com/path?bar=1&foo=2"
VECTOR = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJNZXNzYWdlQmlyZCIsIm5iZiI6MTYyNTQ3OTIwMCwiZXhwIjoxNjI1NDc5Mj"
          "YwLCJqdGkiOiI5M2U1NTAwNi1hMGU4LTQ1MjYtYTE5MC1mYTVmZjAwZWExMTYiLCJ1cmxfaGFzaCI6IjQxZjA1ZjBkZGQwYTIyYWIyMDlh"
          "YzQ2ZjQ3YzQ1NzJkOWNlZmEyNTdlZDc0YjI0MDA0YmFlNzUzZWNlNmMyNjAiLCJwYXlsb2FkX2hhc2giOiJkZmZkNjAyMWJiMmJkNWIwYW"
          "Y2NzYyOTA4MDllYzNhNTMxOTFkZDgxYzdmNzBhNGIyODY4OGEzNjIxODI5ODZmIn0._H--TOuYFLpeEH39-rg5E3IHVkjHozBcaKVWPRC5m9I")
AT = 1625479200 + 5


def test_messagebirds_own_vector_verifies_and_any_change_does_not():
    claims = verify_messagebird(VECTOR_KEY, VECTOR, [VECTOR_URL], b"Hello, World!", now=AT)
    assert claims["jti"] == "93e55006-a0e8-4526-a190-fa5ff00ea116"
    for key, urls, body, now, why in (
            ("another-signing-key-32-bytes-long!!", [VECTOR_URL], b"Hello, World!", AT, "bad token"),
            (VECTOR_KEY, ["https://example.com/path?bar=1&foo=3"], b"Hello, World!", AT, "url_hash"),
            (VECTOR_KEY, [VECTOR_URL], b"Hello, World?", AT, "payload_hash"),
            (VECTOR_KEY, [VECTOR_URL], b"", AT, "payload_hash"),
            (VECTOR_KEY, [VECTOR_URL], b"Hello, World!", AT + 120, "not valid now"),
            (VECTOR_KEY, [VECTOR_URL], b"Hello, World!", AT - 60, "not valid now")):
        with pytest.raises(SignatureError, match=why):
            verify_messagebird(key, VECTOR, urls, body, now=now)
    with pytest.raises(SignatureError, match="missing"):
        verify_messagebird(VECTOR_KEY, None, [VECTOR_URL], b"")


def test_what_the_loopback_signs_verifies_with_the_clock_and_one_of_several_urls():
    key = "a-signing-key-of-at-least-32-bytes-long"
    token = messagebird_jwt(key, "https://hooks.test/v1/tracking/messagebird?id=1")
    verify_messagebird(key, token, ["http://127.0.0.1/x", "https://hooks.test/v1/tracking/messagebird?id=1"], b"")
    with pytest.raises(SignatureError, match="payload_hash"):
        verify_messagebird(key, token, ["https://hooks.test/v1/tracking/messagebird?id=1"], b"smuggled")


def test_status_reports_become_events():
    ev = messagebird_event({"id": "m1", "reference": "nid-1", "recipient": "31612345678", "status": "delivered",
                            "statusReason": "successfully delivered", "statusDatetime": "2023-11-14T22:13:20+00:00"})
    assert (ev.provider, ev.notification_id, ev.provider_message_id, ev.address, ev.status, ev.hard, ev.at) == (
        "messagebird", "nid-1", "m1", "+31612345678", "delivered", False, 1_700_000_000.0)
    gone = messagebird_event({"id": "m2", "status": "delivery_failed", "statusReason": "unknown subscriber",
                              "statusErrorCode": "1"}, now=5)
    assert (gone.status, gone.hard, gone.at, gone.detail) == ("bounced", True, 5, "delivery_failed unknown subscriber "
                                                                                  "error 1")
    stop = messagebird_event({"id": "m3", "status": "delivery_failed", "statusReason": "Opted out"})
    assert (stop.status, stop.hard) == ("complained", True)
    assert messagebird_event({"id": "m4", "status": "expired", "statusReason": "expired"}).status == "failed"
    assert messagebird_event({"id": "m5", "status": "buffered"}).status is None
    with pytest.raises(PayloadError):
        messagebird_event({"status": "delivered"})


def test_inbound_messages_give_the_number_in_e164_and_the_text():
    assert messagebird_inbound({"originator": "31612345678", "body": "STOP"}) == ("+31612345678", "STOP")
    with pytest.raises(PayloadError):
        messagebird_inbound({"body": "STOP"})
