"""What instances of one deployment must agree on (engine/deployment.py): the
actors' names (``Layout``) and the fingerprint of the configuration they were made with."""

from __future__ import annotations

import msgspec

from engine import settings
from engine.deployment import Layout, fingerprint


def load(**env: str):
    return settings.load(profile="development", env=env)


def test_the_layout_names_every_actor_once_with_its_generation():
    cfg = load(TIDINGS_ENGINE_USER_SHARDS="3", TIDINGS_ENGINE_INGESTORS="2")
    layout = Layout.of(cfg, "g1")
    names = layout.every()
    assert len(names) == len(set(names)) and all(n.startswith("tidings-g1-") for n in names)
    assert len(layout.users) == 3 and len(layout.ingestors) == 3  # two bulk, then the priority lane's
    assert layout.ingestors[-1] == "tidings-g1-ingestor-priority"
    assert set(layout.channels) == cfg.enabled_channels()
    assert msgspec.json.decode(msgspec.json.encode(layout), type=Layout) == layout
    assert Layout.of(cfg, "g2") != layout


def test_the_fingerprint_ignores_what_is_each_instances_own():
    base = load()
    own = msgspec.structs.replace(base, http=msgspec.structs.replace(base.http, port=9999, host="0.0.0.0"),
                                  ray=msgspec.structs.replace(base.ray, address="ray://head:10001",
                                                              dashboard=False, metrics_port=9000))
    assert fingerprint(own) == fingerprint(base)


def test_the_fingerprint_sees_what_the_actors_are_made_with():
    base = fingerprint(load())
    assert fingerprint(load(TIDINGS_ENGINE_USER_SHARDS="7")) != base
    assert fingerprint(load(TIDINGS_RECORDER_LINGER_MS="9")) != base
    cfg = load()
    hook = cfg.channels["webhook"]
    provider = msgspec.structs.replace(hook.providers[0], settings={**hook.providers[0].settings, "secret": "other"})
    other = msgspec.structs.replace(cfg, channels={**cfg.channels,
                                                   "webhook": msgspec.structs.replace(hook, providers=[provider])})
    assert fingerprint(other) != base
