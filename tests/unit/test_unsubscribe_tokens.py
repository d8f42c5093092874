"""One-click unsubscribe tokens: they open to what was sealed, only under their
secret, never when altered, and show nothing of the user id."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from policy.unsubscribe import Target, UnsubscribeRules, open_token, seal

SECRET = b"unsubscribe-test-secret-012345"
ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=64)


@settings(max_examples=300)
@given(ids, ids, st.sampled_from(["email", "sms"]))
def test_a_token_opens_to_what_was_sealed_and_hides_the_user(user_id, category, channel):
    token = seal(SECRET, user_id, category, channel)
    assert open_token(SECRET, token) == Target(user_id, category, channel)
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token)  # a URL path segment as it is
    if len(user_id) >= 4:
        assert user_id not in token


@settings(max_examples=300)
@given(ids, st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_an_altered_token_opens_to_nothing(user_id, where, flip):
    token = seal(SECRET, user_id, "marketing", "email")
    raw = bytearray(token.encode())
    i = where % len(raw)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    raw[i] = alphabet[(alphabet.index(raw[i]) + flip) % len(alphabet)]
    changed = raw.decode()
    if changed != token:
        assert open_token(SECRET, changed) is None or open_token(SECRET, changed) == open_token(SECRET, token)


def test_other_secrets_garbage_and_oversize_open_to_nothing():
    token = seal(SECRET, "u1", "marketing", "email")
    assert open_token(b"another-secret-0123456789", token) is None
    for bad in ("", "x", "!!!!", "A" * 2000, token + "A", token[:-3]):
        assert open_token(SECRET, bad) is None
    assert seal(SECRET, "u1", "marketing", "email") == token  # deterministic: one link per person and category


def test_rules_make_a_url_under_the_public_base():
    url = UnsubscribeRules(secret=SECRET, base_url="https://notify.example.test/").url("u1", "marketing", "email")
    assert url.startswith("https://notify.example.test/u/")
    assert open_token(SECRET, url.rsplit("/", 1)[1]) == Target("u1", "marketing", "email")


def test_center_links_expire_and_never_open_as_unsubscribe_tokens():
    from policy.unsubscribe import CenterLink, open_center, seal_center

    link = seal_center(SECRET, "u1", 2_000)
    assert open_center(SECRET, link, 1_999.0) == CenterLink("u1", 2_000)
    assert open_center(SECRET, link, 2_000.0) is None  # expired
    assert open_token(SECRET, link) is None and open_center(SECRET, seal(SECRET, "u1", "m", "email"), 0) is None
