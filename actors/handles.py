"""Actors are given each other by name, not by handle.

An actor handle among an actor's constructor arguments makes Ray pass those
arguments by reference, and a restart may not find them (ray-project/ray#53727;
Ray logs an error once per process when an actor with ``max_restarts`` is made
so). Names are plain strings, passed inline, and a restarted actor looks its
peers up again. The names carry their generation's token, so deployments sharing
a Ray namespace (the tests, a new generation racing the old actors' exit) never
take each other's; every instance of one deployment finds the same actors by
these names (engine/deployment.py)."""

from __future__ import annotations

import logging
from typing import Any

import ray

log = logging.getLogger(__name__)


def name(run: str, kind: str, index: int | str) -> str:
    return f"tidings-{run}-{kind}-{index}"


class LazyPeer:
    """A peer not found when its actor started (dead for now, or Ray's control
    store slow): looked up again at each use until found. A constructor must not
    raise: Ray would not restart an actor whose constructor failed."""

    def __init__(self, peer: str):
        self._peer = peer
        self._handle = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if self._handle is None:
            self._handle = ray.get_actor(self._peer)  # raises while it is missing: the call fails, as to a dead peer
        return getattr(self._handle, attr)

    def __reduce__(self):  # passed on by name, found again where it lands
        return (LazyPeer, (self._peer,))


def resolve(peers: Any) -> Any:
    """``peers`` with every name replaced by the actor's handle: a name, or a
    list or dict of them (anything else, such as a test's fake, is kept)."""
    if isinstance(peers, str):
        try:
            return ray.get_actor(peers)
        except Exception as e:  # noqa: BLE001 - any failure: look again at first use
            log.warning("peer %s not found (%s): looked up again when used", peers, type(e).__name__)
            return LazyPeer(peers)
    if isinstance(peers, list):
        return [resolve(p) for p in peers]
    if isinstance(peers, dict):
        return {k: resolve(v) for k, v in peers.items()}
    return peers
