import orjson
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
])
def test_email_content_is_checked_by_the_providers_rule(content, reason):
    reqs, many = decode_submission(b'{"user_id": "u", "category": "c", "channels": ["email"], "content": ' + content + b'}')
    status, body = problem(check, reqs, AVAILABLE, many, 10)
    assert status == 422 and body["errors"] == [{"field": "$.content", "reason": reason}]


@pytest.mark.parametrize("fields, field", [
    (b'"content": {"subject": "a\\r\\nBcc: x@y.z", "text": "x"}', "$.content.subject"),
    (b'"content": {"subject": "a\\u000bb", "text": "x"}', "$.content.subject"),
    (b'"content": {"subject": "a\\u2028b", "text": "x"}', "$.content.subject"),
    (b'"content": {"subject": "a\\u0085b", "text": "x"}', "$.content.subject"),
    (b'"content": {"subject": "s", "text": "a\\u0000b"}', "$.content.text"),
    (b'"content": {"subject": "s", "html": "a\\u0000b"}', "$.content.html"),
    (b'"channel_content": {"email": {"subject": "a\\tb", "text": "x"}}', "$.channel_content[...].subject"),
    (b'"idempotency_key": "k\\u0000"', "$.idempotency_key"),
    (b'"content_type": "a\\nb"', "$.content_type"),
    (b'"context": {"device": "a\\u001eb"}', "$.context[...]"),
    (b'"metadata": {"k": "a\\tb"}', "$.metadata[...]"),
])
def test_control_characters_are_refused_at_decode_naming_the_field(fields, field):
    status, body = problem(decode_submission,
                           b'{"user_id": "u", "category": "c", "channels": ["email"], ' + fields + b'}')
    assert status == 422 and body["errors"][0]["field"] == field


def test_a_control_character_in_a_metadata_key_is_refused():
    status, body = problem(decode_submission, b'{"user_id": "u", "category": "c", "channels": ["email"], '
                                              b'"metadata": {"k\\u0000": "v"}}')
    assert status == 422 and body["errors"][0]["field"] == "$.metadata" and "(in a key)" in body["errors"][0]["reason"]


def test_tabs_and_newlines_are_fine_in_a_body():
    reqs, many = decode_submission(b'{"user_id": "u", "category": "c", "channels": ["email"], '
                                   b'"content": {"subject": "s \\u00e9", "text": "a\\tb\\r\\nc", "html": "<p>\\n</p>"}}')
    check(reqs, AVAILABLE, many, 10)


def test_nul_in_data_is_422_with_its_path():
    reqs, many = decode_submission(
        b'{"user_id": "u", "category": "c", "channels": ["webhook"], "content": {"text": "x", '
        b'"data": {"a": [1, {"b": "x\\u0000"}], "ok": "fine"}}, "template": {"id": "t", "data": {"k\\u0000": 1}}}')
    status, body = problem(check, reqs, AVAILABLE, many, 10)
    assert status == 422
    assert {"field": "$.content.data.a[1].b", "reason": "contains a NUL character"} in body["errors"]
    assert {"field": "$.template.data.k\\u0000", "reason": "contains a NUL character"} in body["errors"]


@pytest.mark.parametrize("field, value", [("timezone", "Europe/Berlin\n"), ("locale", "de\x00")])
def test_profile_timezone_and_locale_refuse_control_characters(field, value):
    status, body = problem(profile_from, {field: value}, "u1", "$")
    assert status == 422 and body["errors"][0]["field"] == f"$.{field}"


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


def test_schema_errors_list_every_violation_with_its_path():
    body = (b'[{"user_id": "", "category": "Bad Cat", "channels": ["fax"], "extra": 1},'
            b' {"category": "ok", "channels": ["email"]}]')
    try:
        decode_submission(body)
    except Problem as p:
        fields = [e["field"] for e in orjson.loads(p.text)["errors"]]
    else:
        raise AssertionError("accepted")
    assert sorted(fields) == ["$[0].category", "$[0].channels[0]", "$[0].extra", "$[0].user_id", "$[1].user_id"]
