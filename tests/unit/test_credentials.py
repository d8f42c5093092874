"""engine/credentials.py without a database: the keyring (round trip, wrong key,
rotation, tampering, the name bound to its ciphertext), key loading from the
environment, and filling ``secret:NAME`` provider settings."""

from __future__ import annotations

import base64
import io

import pytest
from cryptography.fernet import Fernet

from engine import credentials, settings
from engine.cli.credentials import read_value
from engine.credentials import KEY_ENV, CredentialError, Keyring
from infra import config
from infra.config import ChannelConfig, ProviderConfig
from providers import registry
from providers.errors import ConfigurationError

VALUE = "whsec_not-a-real-secret-7f3a"


@pytest.fixture
def key() -> bytes:
    return Fernet.generate_key()


def test_round_trip_and_no_plaintext_in_the_token(key):
    ring = Keyring([key])
    token = ring.encrypt("hook", VALUE)
    assert VALUE.encode() not in token and VALUE.encode() not in base64.urlsafe_b64decode(token)
    assert ring.decrypt("hook", token) == VALUE
    assert ring.encrypt("hook", VALUE) != token  # a fresh IV each time


def test_a_wrong_key_names_the_credential_and_its_key_never_the_value(key):
    token = Keyring([key]).encrypt("hook", VALUE)
    other = Keyring([Fernet.generate_key()])
    with pytest.raises(CredentialError) as e:
        other.decrypt("hook", token, credentials.key_id(key))
    assert e.value.name == "hook"
    assert "'hook'" in str(e.value) and credentials.key_id(key) in str(e.value)
    assert VALUE not in str(e.value) and key.decode() not in str(e.value)


def test_a_tampered_ciphertext_is_refused(key):
    ring = Keyring([key])
    raw = bytearray(base64.urlsafe_b64decode(ring.encrypt("hook", VALUE)))
    raw[30] ^= 1  # a bit of the ciphertext body
    with pytest.raises(CredentialError, match="'hook'.*altered"):
        ring.decrypt("hook", base64.urlsafe_b64encode(bytes(raw)))


def test_a_ciphertext_moved_to_another_name_is_refused(key):
    ring = Keyring([key])
    token = ring.encrypt("hook", VALUE)
    with pytest.raises(CredentialError, match="'twilio' holds a ciphertext made for 'hook'") as e:
        ring.decrypt("twilio", token)
    assert VALUE not in str(e.value)


def test_rotation_first_key_encrypts_every_key_decrypts(key):
    new = Fernet.generate_key()
    old_token = Keyring([key]).encrypt("hook", VALUE)
    both = Keyring([new, key])
    assert both.key_id == credentials.key_id(new) != credentials.key_id(key)
    assert both.decrypt("hook", old_token) == VALUE
    new_token = both.encrypt("hook", both.decrypt("hook", old_token))
    assert Keyring([new]).decrypt("hook", new_token) == VALUE
    with pytest.raises(CredentialError):
        Keyring([key]).decrypt("hook", new_token)


def test_keys_from_the_environment(key):
    new = Fernet.generate_key()
    ring = Keyring.from_env({KEY_ENV: f" {new.decode()} , {key.decode()},"})
    assert ring.key_ids == [credentials.key_id(new), credentials.key_id(key)]
    for env in ({}, {KEY_ENV: ""}, {KEY_ENV: " , "}):
        with pytest.raises(CredentialError, match=f"{KEY_ENV} is not set"):
            Keyring.from_env(env)
    with pytest.raises(CredentialError, match="key 2 of 2 is not a Fernet key") as e:
        Keyring.from_env({KEY_ENV: f"{key.decode()},short-and-secret"})
    assert "short-and-secret" not in str(e.value)
    assert isinstance(e.value, config.ConfigError)


def test_the_key_variable_is_not_a_setting(key):
    cfg = settings.load(profile="default", env={KEY_ENV: key.decode()})
    assert cfg.engine.user_shards >= 1


def test_names_and_values_are_checked(key):
    ring = Keyring([key])
    for bad in ("", "has space", "a/b", "x" * 201):
        with pytest.raises(CredentialError, match="credential name"):
            ring.encrypt(bad, VALUE)
    with pytest.raises(CredentialError, match="non-empty"):
        ring.encrypt("hook", "")


def _cfg(*providers: ProviderConfig, enabled: bool = True) -> config.Config:
    return config.convert({"channels": {"webhook": {"enabled": enabled, "providers": [
        {"name": p.name, "type": p.type, "enabled": p.enabled, "settings": p.settings} for p in providers]}}})


def test_references_are_those_of_providers_the_engine_builds():
    on = ProviderConfig(name="hooks", type="webhook", settings={"secret": "secret:hook", "url": "http://x"})
    off = ProviderConfig(name="spare", type="webhook", enabled=False, settings={"secret": "secret:spare"})
    assert credentials.references(_cfg(on, off)) == [("webhook", "hooks", "secret", "hook")]
    assert credentials.references(_cfg(on, enabled=False)) == []


def test_fill_replaces_only_secret_references():
    ch = ChannelConfig(providers=[ProviderConfig(name="hooks", type="webhook", settings={
        "secret": "secret:hook", "url": "http://x", "token": "env:T", "n": 3})])
    filled = credentials.fill(ch, {"hook": VALUE})
    assert filled.providers[0].settings == {"secret": VALUE, "url": "http://x", "token": "env:T", "n": 3}
    assert ch.providers[0].settings["secret"] == "secret:hook"  # the original untouched
    assert credentials.fill(ch, {}).providers[0].settings["secret"] == "secret:hook"


def test_the_registry_refuses_a_reference_that_was_not_filled():
    with pytest.raises(ConfigurationError, match="'secret': secret:hook was not filled"):
        registry.create("webhook", "hooks", {"secret": "secret:hook", "url": "http://127.0.0.1:9/hook"})


def test_read_value_from_a_pipe_drops_one_newline():
    assert read_value("hook", io.StringIO(VALUE + "\n")) == VALUE
    assert read_value("hook", io.StringIO(VALUE + "\r\n")) == VALUE
    assert read_value("hook", io.StringIO(VALUE + "\n\n")) == VALUE + "\n"
