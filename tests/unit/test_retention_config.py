"""The ``[retention]`` settings: defaults, overrides, bad values named, and keep
times that would let a redelivered message through refused."""

import pytest

from engine import settings
from infra import config
from infra.config import ConfigError
from stores import retention


def test_defaults_keep_unread_inbox_and_nothing_forever_otherwise():
    r = settings.load(profile="default", env={}).retention
    assert (r.tracking_days, r.scheduled_done_days, r.change_feed_days, r.inbox_read_days, r.jobs_days) == \
        (30, 7, 30, 90, 30)
    assert r.inbox_unread_days == 0 and r.interval_s == 3600 and r.batch == 5000
    assert [k.name for k, _ in retention.active(r)] == [
        "tracking", "engagement", "experiments", "scheduled", "digest_buckets", "change_feed", "inbox_read", "jobs",
        "event_dead_letters"]


def test_env_overrides_and_zero_keeps_a_kind_forever():
    r = settings.load(env={"TIDINGS_RETENTION_JOBS_DAYS": "0", "TIDINGS_RETENTION_INBOX_UNREAD_DAYS": "365",
                         "TIDINGS_RETENTION_BATCH": "100"}).retention
    assert r.jobs_days == 0 and r.inbox_unread_days == 365 and r.batch == 100
    assert dict((k.name, d) for k, d in retention.active(r))["inbox_unread"] == 365
    assert "jobs" not in {k.name for k, _ in retention.active(r)}


def test_every_kind_reads_a_setting_that_exists():
    fields = set(config.RetentionConfig.__struct_fields__)
    assert {k.setting for k in retention.KINDS} <= fields


@pytest.mark.parametrize("env, named", [
    ({"TIDINGS_RETENTION_TRACKING_DAYS": "-1"}, "$.retention.tracking_days"),
    ({"TIDINGS_RETENTION_TRACKING_DAYS": "1.5"}, "$.retention.tracking_days"),
    ({"TIDINGS_RETENTION_BATCH": "0"}, "$.retention.batch"),
    ({"TIDINGS_RETENTION_INTERVAL_S": "-5"}, "$.retention.interval_s"),
    ({"TIDINGS_RETENTION_KEEP": "1"}, "retention.keep"),
])
def test_bad_values_are_named(env, named):
    with pytest.raises(ConfigError, match=named.replace("$", r"\$")):
        settings.load(env=env)


@pytest.mark.parametrize("name", ["tracking_days", "change_feed_days"])
def test_idempotency_records_must_outlive_redelivery(name):
    key = f"TIDINGS_RETENTION_{name.upper()}"
    with pytest.raises(ConfigError, match=f"retention.{name} = 6 is shorter than nats.max_age_s"):
        settings.load(env={key: "6"})  # nats.max_age_s is 7 days
    assert getattr(settings.load(env={key: "7"}).retention, name) == 7
    assert getattr(settings.load(env={key: "0"}).retention, name) == 0  # kept forever
    shorter = settings.load(env={key: "1", "TIDINGS_NATS_MAX_AGE_S": "86400"})
    assert getattr(shorter.retention, name) == 1
    with pytest.raises(ConfigError, match=f"retention.{name} = 7, but nats.max_age_s = 0"):
        others = {"TIDINGS_RETENTION_TRACKING_DAYS": "0", "TIDINGS_RETENTION_CHANGE_FEED_DAYS": "0"}
        settings.load(env={**others, key: "7", "TIDINGS_NATS_MAX_AGE_S": "0"})  # messages never expire
    forever = settings.load(env={key: "0", "TIDINGS_NATS_MAX_AGE_S": "0", "TIDINGS_RETENTION_TRACKING_DAYS": "0",
                               "TIDINGS_RETENTION_CHANGE_FEED_DAYS": "0"})
    assert getattr(forever.retention, name) == 0
    # kinds that are no idempotency record are not bound by it
    assert settings.load(env={"TIDINGS_RETENTION_JOBS_DAYS": "1"}).retention.jobs_days == 1


def test_round_trips_to_actors():
    cfg = settings.load(env={"TIDINGS_RETENTION_INTERVAL_S": "0"})
    assert config.decode(config.encode(cfg)).retention == cfg.retention
