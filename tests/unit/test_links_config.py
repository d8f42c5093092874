"""``[engagement]``: the open pixel and click redirect's settings, and the
UserShard's link rules built from them."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from actors.user_links import link_rules
from engine import settings
from infra import config
from infra.config import ConfigError
from policy import links
from policy.types import Content, DeliveryTask

SECRET = "s" * 16


def load(**env) -> config.Config:
    return settings.load(profile="default", env={f"TIDINGS_ENGAGEMENT_{k.upper()}": v for k, v in env.items()})


def test_off_by_default():
    cfg = load()
    assert cfg.engagement.base_url == "" and not cfg.engagement.enabled and link_rules(cfg) is None


def test_env_sets_every_field():
    e = load(base_url="https://t.example.test/", secret=SECRET, opens="false", channels="email, web").engagement
    assert (e.base_url, e.secret, e.opens, e.clicks, e.channels) == (
        "https://t.example.test", SECRET, False, True, ["email", "web"])
    assert e.enabled


@pytest.mark.parametrize("env, words", [
    ({"base_url": "https://t.test"}, "engagement.secret is not set"),
    ({"base_url": "https://t.test", "secret": "short"}, "shorter than 16"),
    ({"base_url": "t.test", "secret": SECRET}, "engagement.base_url"),
    ({"channels": "pager"}, "engagement.channels"),
])
def test_bad_settings_are_config_errors(env, words):
    with pytest.raises(ConfigError, match=words):
        load(**env)


def task(html: str, category: str = "marketing") -> DeliveryTask:
    return DeliveryTask(str(uuid.uuid4()), "u 1", "email", category, "a@x.test",
                        Content(subject="s", html=html, text="t"))


def test_the_tracker_leaves_the_filled_unsubscribe_url_alone():
    cfg = load(base_url="https://t.test", secret=SECRET)
    email = cfg.channels["email"] if "email" in cfg.channels else config.ChannelConfig()
    provider = config.ProviderConfig(name="smtp", type="smtp", settings={
        "unsubscribe_url": "https://x.test/unsub/{user_id}/{category}"})
    cfg = msgspec.structs.replace(cfg, channels={"email": msgspec.structs.replace(email, providers=[provider])})
    t = task('<a href="https://x.test/unsub/u%201/marketing">u</a><a href="https://x.test/go">go</a>')
    out = links.track(link_rules(cfg), t)
    assert (out.content.text, out.content.subject, out.address) == ("t", "s", "a@x.test")
    html = out.content.html
    assert html.startswith('<a href="https://x.test/unsub/u%201/marketing">u</a><a href="https://t.test/v1/t/c/')
    token = html.split("/v1/t/c/")[1].split('"')[0]
    assert links.verify(SECRET.encode(), token, "c").url == "https://x.test/go"
    assert '<img src="https://t.test/v1/t/o/' in html
