"""API keys' shape: every key made splits back into its id and secret, whose
hash is what is stored; anything else is not a key."""

from hypothesis import given, settings, strategies as st

from engine import auth


def test_new_keys_split_into_id_and_secret():
    for _ in range(2000):  # secrets are urlsafe base64: '_' and '-' occur in them
        key_id, key = auth.new_key()
        assert auth.split(key) == (key_id, key[len(auth.PREFIX) + 13:])


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_anything_else_is_not_a_key(text):
    parts = auth.split(text)
    assert parts is None or (text.startswith(auth.PREFIX) and len(parts[0]) == 12 and parts[1])


def test_scopes_are_checked():
    assert auth.check_scopes(["notifications:send", "admin", "admin"]) == ["admin", "notifications:send"]
    for bad in ([], ["root"]):
        try:
            auth.check_scopes(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
