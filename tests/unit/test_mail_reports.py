"""VERP tokens and the reading of delivery reports (RFC 3464) and feedback-loop
complaints (RFC 5965)."""

import uuid

from hypothesis import given, settings, strategies as st

from providers.email import verp
from providers.tracking import mailreport
from sandbox.smtp import ReceivedMail, delivery_report, feedback_report

SECRET = b"unit-secret"
NID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def mail(nid: str = NID) -> ReceivedMail:
    tok = verp.token(SECRET, nid)
    return ReceivedMail(mail_from=verp.return_path(tok, "b.example.com"), rcpt_tos=("p@example.org",), subject="s",
                        notification_id=nid, has_text=True, has_html=False, content_type="text/plain",
                        raw=(f"From: n@tidings.test\r\nTo: p@example.org\r\nMessage-ID: {verp.message_id(tok, 't.test')}"
                             "\r\n\r\nbody\r\n").encode())


@given(st.uuids())
def test_a_token_names_its_notification_under_its_secret_only(u):
    tok = verp.token(SECRET, str(u))
    assert verp.notification_of([verp.return_path(tok, "b.test")], [b"other", SECRET]) == str(u)
    assert verp.notification_of([verp.message_id(tok.upper(), "t.test")], [SECRET]) == str(u)  # case changed in transit
    assert verp.notification_of([verp.return_path(tok, "b.test")], [b"other"]) is None


@given(st.uuids(), st.integers(0, 48), st.sampled_from("0123456789abcdefghijklmnopqrstuvwxyz"))
def test_a_changed_character_does_not_verify(u, at, char):
    tok = verp.token(SECRET, str(u))
    changed = tok[:at] + char + tok[at + 1:]
    if changed != tok:
        found = verp.notification_of([changed], [SECRET])
        assert found is None


def test_not_a_uuid_has_no_token():
    assert verp.token(SECRET, "nid-1") is None


def test_a_hard_bounce():
    r = mailreport.parse(delivery_report(mail()), "smtp", 0.0)
    assert r is not None and r.kind == "dsn" and r.addresses == [["p@example.org"]]
    (ev,) = r.events
    assert (ev.status, ev.hard, ev.event) == ("bounced", True, "bounce") and "5.1.1" in ev.detail
    assert verp.notification_of(r.token_texts, [SECRET]) == NID


def test_transient_delayed_and_delivered():
    m = mail()
    soft = mailreport.parse(delivery_report(m, "failed", "4.2.2"), "smtp", 0.0).events[0]
    assert (soft.status, soft.hard) == ("failed", False)
    relayed = mailreport.parse(delivery_report(m, "relayed", "2.0.0"), "smtp", 0.0).events[0]
    assert relayed.status is None
    delayed = mailreport.parse(delivery_report(m, "delayed", "4.4.1"), "smtp", 0.0).events[0]
    assert (delayed.status, delayed.hard, delayed.event) == (None, False, "delayed")
    done = mailreport.parse(delivery_report(m, "delivered", "2.0.0", "smtp; 250 ok"), "smtp", 0.0).events[0]
    assert done.status == "delivered"


def test_complaints():
    m = mail()
    r = mailreport.parse(feedback_report(m), "smtp", 0.0)
    assert r.kind == "arf" and r.addresses == [["p@example.org"]]
    assert (r.events[0].status, r.events[0].hard) == ("complained", True)
    assert mailreport.parse(feedback_report(m, redacted=True), "smtp", 0.0).addresses == [[]]
    not_spam = mailreport.parse(feedback_report(m, "not-spam"), "smtp", 0.0).events[0]
    assert (not_spam.status, not_spam.hard) == (None, False)


def test_what_is_not_a_report():
    assert mailreport.parse(b"From: a@b\r\nSubject: Out of office\r\n\r\naway\r\n", "smtp", 0.0) is None
    other = delivery_report(mail()).replace(b"report-type=delivery-status", b"report-type=disposition-notification")
    assert mailreport.parse(other, "smtp", 0.0) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_read_or_refused_never_raise(raw):
    mailreport.parse(raw, "smtp", 0.0)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_mutation_of_a_report_reads_or_refuses(data):
    raw = bytearray(delivery_report(mail(str(uuid.uuid4()))))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    mailreport.parse(bytes(raw), "smtp", 0.0)


def test_only_a_bad_address_is_a_hard_bounce():
    """A policy block, DMARC, a full mailbox or a message too big is not the
    address's fault: failed, never suppressing."""
    m = mail()
    for status, hard in (("5.1.1", True), ("5.1.10", True), ("5.2.1", True), ("5.4.4", True), ("5.7.1", False),
                         ("5.7.26", False), ("5.2.2", False), ("5.3.4", False), ("55.1.1", False), ("5.1.1.1", False)):
        ev = mailreport.parse(delivery_report(m, "failed", status), "smtp", 0.0).events[0]
        assert (ev.status, ev.hard) == (("bounced", True) if hard else ("failed", False)), status


def test_each_recipient_block_keeps_its_own_addresses():
    raw = delivery_report(mail()).replace(
        b"Final-Recipient: rfc822; p@example.org\r\nOriginal-Recipient: rfc822;p@example.org\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n",
        b"Final-Recipient: rfc822; alias-target@corp.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 no such user\r\n\r\n"
        b"Final-Recipient: rfc822; p@example.org\r\nAction: delayed\r\nStatus: 4.4.1\r\n")
    r = mailreport.parse(raw, "smtp", 0.0)
    assert [(e.status, e.hard) for e in r.events] == [("bounced", True), (None, False)]
    assert r.addresses == [["alias-target@corp.example"], ["p@example.org"]]


def test_a_base64_delivery_status_is_read():
    import base64
    raw = delivery_report(mail())
    head, sep, rest = raw.partition(b"Content-Type: message/delivery-status\r\n\r\n")
    fields, boundary, tail = rest.partition(b"\r\n--")
    encoded = b"Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n" + \
        base64.encodebytes(fields).replace(b"\n", b"\r\n")
    r = mailreport.parse(head + encoded + b"\r\n--" + tail, "smtp", 0.0)
    assert r is not None and r.events[0].status == "bounced" and r.addresses == [["p@example.org"]]


def test_feedback_types_are_a_fixed_vocabulary():
    m = mail()
    for kind, name in (("not\x00spam", "feedback"), ("x" * 5000, "feedback"), ("Virus", "virus"), ("abuse", "complaint")):
        raw = feedback_report(m).replace(b"Feedback-Type: abuse", f"Feedback-Type: {kind}".encode())
        assert mailreport.parse(raw, "smtp", 0.0).events[0].event == name
    missing = feedback_report(m).replace(b"Feedback-Type: abuse\r\n", b"")
    assert mailreport.parse(missing, "smtp", 0.0) is None


def test_an_eight_bit_quoted_message_id_is_text():
    m = mail()
    mid = m.raw.split(b"Message-ID: ")[1].split(b"\r\n")[0]
    raw = feedback_report(m).replace(b"Message-ID: " + mid, "Message-ID: <café.".encode() + mid[1:])
    assert "café".encode() in raw
    r = mailreport.parse(raw, "smtp", 0.0)
    assert all(isinstance(t, str) for t in r.token_texts)
    assert verp.notification_of(r.token_texts, [SECRET]) == NID  # the token is still there, and nothing raises
