import pytest

from engine.errors import field_error
from engine.http import Problem, check, decode_submission

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
