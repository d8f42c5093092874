"""Actors are given their peers by name (actors/handles.py): names become
handles, in lists and dicts too; anything else (a test's fake) stays."""

from __future__ import annotations

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
