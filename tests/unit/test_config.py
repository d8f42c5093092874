import pytest

from engine import settings
from infra import config
from infra.config import ConfigError


def test_profiles_load_and_name_their_channels():
    dev = settings.load(profile="development", env={})
    assert dev.enabled_channels() == {"email", "webhook", "in_app"}
    prod = settings.load(profile="production", env={})
    assert prod.ray.address == "auto" and prod.engine.user_shards == 8


def test_env_overrides_profile_and_converts_types():
    cfg = settings.load(profile="development", env={"TIDINGS_ENGINE_USER_SHARDS": "5",
                                                  "TIDINGS_NATS_URL": "nats://x:4222",
                                                  "TIDINGS_RAY_DASHBOARD": "false"})
    assert cfg.engine.user_shards == 5 and cfg.nats.url == "nats://x:4222" and cfg.ray.dashboard is False


def test_ray_metrics_port_is_a_setting():
    assert settings.load(env={}).ray.metrics_port == 0  # Ray picks one
    assert settings.load(env={"TIDINGS_RAY_METRICS_PORT": "9101"}).ray.metrics_port == 9101


def test_ray_address_is_honoured():
    assert settings.load(env={"RAY_ADDRESS": "ray://head:10001"}).ray.address == "ray://head:10001"


@pytest.mark.parametrize("env, named", [
    ({"TIDINGS_NATS_FOO": "1"}, "TIDINGS_NATS_FOO"),
    ({"TIDINGS_NOPE": "1"}, "TIDINGS_NOPE"),
    ({"TIDINGS_ENGINE_USER_SHARDS": "many"}, "$.engine.user_shards"),
    ({"TIDINGS_ENGINE_USER_SHARDS": "0"}, "$.engine.user_shards"),
    ({"TIDINGS_NATS_PREFIX": "bad prefix"}, "$.nats.prefix"),
    ({"TIDINGS_RAY_METRICS_PORT": "70000"}, "$.ray.metrics_port"),
    ({"TIDINGS_RATELIMIT_KEY_BURST": "inf"}, "$.ratelimit.key_burst"),  # the limiter's µs must stay exact
    ({"TIDINGS_RATELIMIT_USER_PER_S": "1e-300"}, "$.ratelimit.user_per_s"),
])
def test_bad_settings_are_errors_that_name_the_key(env, named):
    with pytest.raises(ConfigError, match=named.replace("$", r"\$")):
        settings.load(env=env)


def test_unknown_key_in_a_file_is_named(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("[engine]\nuser_shard = 3\n")
    with pytest.raises(ConfigError, match=r"unknown field `user_shard`.*\$\.engine"):
        settings.load(path=f, env={})


def test_unknown_provider_field_is_named(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('[[channels.sms.providers]]\nname = "t"\ntype = "twilio"\nrate = 3\n')
    with pytest.raises(ConfigError, match=r"unknown field `rate`.*providers\[0\]"):
        settings.load(path=f, env={})


def test_test_and_meta_variables_are_not_settings():
    settings.load(env={"TIDINGS_TEST_NATS_URL": "x", "TIDINGS_ENV": "development", "TIDINGS_CONFIG_DIR": "."})


def test_round_trips_to_actors():
    cfg = settings.load(env={})
    assert config.decode(config.encode(cfg)) == cfg


def test_provider_settings_read_credentials_from_the_environment():
    from providers.errors import ConfigurationError as ProviderConfigError
    from providers.registry import from_env
    assert from_env({"auth_token": "env:TW_TOKEN", "from": "+14155552671"}, {"TW_TOKEN": "s3cret"}) == {
        "auth_token": "s3cret", "from": "+14155552671"}
    with pytest.raises(ProviderConfigError, match="TW_TOKEN is not set") as e:
        from_env({"auth_token": "env:TW_TOKEN"}, {})
    assert "s3cret" not in str(e.value)


def test_secrets_given_in_the_environment_are_not_taken_for_settings():
    env = {"TIDINGS_AUDIT_SIGNING_KEY": "pem", "TIDINGS_CREDENTIALS_KEY": "k", "TIDINGS_API_KEY": "tdk_x",
           "TIDINGS_PRIVACY_MASTER_KEYS": "m1:" + "A" * 44}
    assert settings.load(env=env).privacy.master_keys == "m1:" + "A" * 44


def test_event_egress_allow_is_checked_as_cidrs_when_loaded():
    assert settings.load(env={"TIDINGS_EVENTS_EGRESS_ALLOW": "127.0.0.0/8, ::1"}).events.egress_allow == \
        ["127.0.0.0/8", "::1"]
    with pytest.raises(ConfigError, match="events.egress_allow entry 'intranet'"):
        settings.load(env={"TIDINGS_EVENTS_EGRESS_ALLOW": "127.0.0.1,intranet"})


def test_the_ports_the_engine_opens_differ():
    with pytest.raises(ConfigError, match="ray.metrics_port = 8080 is also http.port"):
        settings.load(env={"TIDINGS_RAY_METRICS_PORT": "8080"})
    assert settings.load(env={"TIDINGS_RAY_METRICS_PORT": "9101"}).ray.metrics_port == 9101
