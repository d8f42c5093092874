import pytest

from engine.http.common import Problem
from engine.http.errors import field_error
from engine.http.notifications import check, decode_submission
from engine.http.users import profile_from

AVAILABLE = frozenset({"email", "webhook"})


def problem(fn, *args):
    with pytest.raises(Problem) as info:
        fn(*args)
    import orjson
    return info.value.status, orjson.loads(info.value.body)


def test_single_and_batch():
    reqs, many = decode_submission(b'{"user_id": "u", "category": "c", "channels": ["webhook"]}')
    assert len(reqs) == 1 and not many
    reqs, many = decode_submission(b' [{"user_id": "u", "category": "c", "channels": ["webhook"]}]')
    assert len(reqs) == 1 and many


def test_every_violation_is_reported_with_its_path():
    reqs, many = decode_submission(
        b'[{"user_id": "u", "category": "c", "channels": ["sms", "email"], "content": {"text": "x"}}]')
    status, body = problem(check, reqs, AVAILABLE, many, 10)
    assert status == 422
    assert [e["field"] for e in body["errors"]] == ["$[0].channels[0]", "$[0].content"]


def test_batch_limit():
    reqs, _ = decode_submission(b'[' + b','.join([b'{"user_id": "u", "category": "c", "channels": ["webhook"], '
                                                  b'"content": {"text": "x"}}'] * 3) + b']')
    status, body = problem(check, reqs, AVAILABLE, True, 2)
    assert status == 422 and "at most 2" in body["errors"][0]["reason"]


@pytest.mark.parametrize("message, field", [
    ("Expected `str`, got `int` - at `$.user_id`", "$.user_id"),
    ("Object missing required field `user_id`", "$.user_id"),
    ("Object missing required field `category` - at `$[3]`", "$[3].category"),
    ("Object contains unknown field `colour`", "$.colour"),
])
def test_field_error_paths(message, field):
    assert field_error(message)["field"] == field


@pytest.mark.parametrize("content, reason", [
    (b'{"text": "x"}', "email needs a subject"),
    (b'{"subject": "s"}', "email needs text or html content"),
    (b'{"subject": "a\\r\\nBcc: x@y.z", "text": "x"}', "email subject contains a line break"),
])
def test_email_content_is_checked_by_the_providers_rule(content, reason):
    reqs, many = decode_submission(b'{"user_id": "u", "category": "c", "channels": ["email"], "content": ' + content + b'}')
    status, body = problem(check, reqs, AVAILABLE, many, 10)
    assert status == 422 and body["errors"] == [{"field": "$.content", "reason": reason}]


def test_good_email_content_passes():
    reqs, many = decode_submission(
        b'{"user_id": "u", "category": "c", "channels": ["email"], "content": {"subject": "s", "html": "<p>x</p>"}}')
    check(reqs, AVAILABLE, many, 10)


@pytest.mark.parametrize("address", ["bob", "@x.test", "bob@", "Bob <bob@x.test>", "a@x.test, b@x.test", "a b@x.test"])
def test_a_malformed_email_address_is_422_naming_it(address):
    status, body = problem(profile_from, {"addresses": {"email": address}}, "u1", "$")
    assert status == 422 and body["errors"] == [{"field": "$.addresses.email", "reason": "not an email address"}]


def test_a_bare_email_address_is_taken():
    profile = profile_from({"addresses": {"email": "bob@x.test"}}, "u1", "$")
    assert profile.user_id == "u1" and profile.addresses == {"email": "bob@x.test"}
