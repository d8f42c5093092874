"""Actors are given their peers by name (actors/handles.py): names become
handles, in lists and dicts too; anything else (a test's fake) stays."""

from __future__ import annotations

import pytest

from actors import handles


def test_names_become_handles_and_fakes_stay(monkeypatch):
    looked_up = []
    monkeypatch.setattr(handles.ray, "get_actor", lambda name: looked_up.append(name) or f"<{name}>")
    fake = object()
    peers = {"email": [handles.name("r1", "email", 0), handles.name("r1", "email", 1)], "sms": []}
    assert handles.resolve(peers) == {"email": ["<tidings-r1-email-0>", "<tidings-r1-email-1>"], "sms": []}
    assert handles.resolve(handles.name("r1", "recorder", 0)) == "<tidings-r1-recorder-0>"
    assert handles.resolve(fake) is fake and handles.resolve([fake]) == [fake] and handles.resolve(None) is None
    assert looked_up == ["tidings-r1-email-0", "tidings-r1-email-1", "tidings-r1-recorder-0"]


def test_each_spawn_names_its_own_actors():
    assert handles.name("a", "user", 0) != handles.name("b", "user", 0)


def test_a_peer_missing_at_start_is_looked_up_again_when_used(monkeypatch):
    """A constructor must not raise (Ray would never restart the actor): a peer
    not found yet is found at its first use."""
    import pickle

    class Found:
        def ping(self):
            return "pong"

    alive: dict[str, object] = {}

    def get_actor(name):
        if name not in alive:
            raise ValueError(f"Failed to look up actor with name '{name}'")
        return alive[name]

    monkeypatch.setattr(handles.ray, "get_actor", get_actor)
    peer = handles.resolve(handles.name("r1", "recorder", 0))
    assert isinstance(peer, handles.LazyPeer)
    with pytest.raises(ValueError):  # a peer still missing fails its call, as a dead one did
        peer.ping()
    alive["tidings-r1-recorder-0"] = Found()
    assert peer.ping() == "pong"
    assert isinstance(pickle.loads(pickle.dumps(peer)), handles.LazyPeer)  # passed on by name
