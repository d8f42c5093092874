"""Actors are given each other by name, not by handle.

An actor handle among an actor's constructor arguments puts those arguments in
Ray's object store, where a restart may not find them (ray-project/ray#53727;
Ray logs an error for each such actor created with ``max_restarts``). Names are
plain strings, passed inline, and a restarted actor looks its peers up again.
The names carry the spawn's own token, so engines sharing a Ray namespace (the
tests, a restart racing the old actors' exit) never take each other's."""

from __future__ import annotations

from typing import Any

import ray


def name(run: str, kind: str, index: int | str) -> str:
    return f"tidings-{run}-{kind}-{index}"


def resolve(peers: Any) -> Any:
    """``peers`` with every name replaced by the actor's handle: a name, or a
    list or dict of them (anything else, such as a test's fake, is kept)."""
    if isinstance(peers, str):
        return ray.get_actor(peers)
    if isinstance(peers, list):
        return [resolve(p) for p in peers]
    if isinstance(peers, dict):
        return {k: resolve(v) for k, v in peers.items()}
    return peers
