"""Wake-ups for readers waiting on one notification's status (the GraphQL
``notificationStatus`` subscription): one NATS subscription per HTTP process
on the status events (``<prefix>.events.>``, actors/event_sender.py), made
while anyone waits and dropped when no one does, fanned out by notification id.

An event only says "read again": the reader reads the outcome from PostgreSQL,
so a missed or late event costs at most its fallback poll, never a wrong
answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import msgspec

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 2.0


class _Id(msgspec.Struct):
    notification_id: str = ""
    parent_id: str | None = None


_decode = msgspec.json.Decoder(_Id).decode


class StatusWatch:
    def __init__(self, nc: Any, prefix: str):
        self.nc, self.subject = nc, f"{prefix}.events.>"
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.sub: Any = None
        self.lock = asyncio.Lock()

    async def _on_event(self, msg) -> None:
        try:
            ev = _decode(msg.data)
        except msgspec.DecodeError:
            return
        for nid in (ev.notification_id, ev.parent_id):
            for woke in self.waiters.get(nid or "", ()):
                woke.set()

    @contextlib.asynccontextmanager
    async def watching(self, nid: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``nid`` (or a broadcast it is the parent of)
        has a status event; the NATS subscription is confirmed before this
        yields, so a change after the caller's first read is not missed.
        Without NATS the event is never set (the caller polls)."""
        woke = asyncio.Event()
        async with self.lock:
            if self.sub is None:
                try:
                    self.sub = await self.nc.subscribe(self.subject, cb=self._on_event)
                    await self.nc.flush(timeout=SUBSCRIBE_TIMEOUT_S)
                except Exception as exc:  # noqa: BLE001 - the caller falls back to polling
                    log.warning("status watch: not subscribed to status events (%s)", type(exc).__name__)
                    await self._drop()
            self.waiters.setdefault(nid, set()).add(woke)
        try:
            yield woke
        finally:
            async with self.lock:
                mine = self.waiters.get(nid, set())
                mine.discard(woke)
                if not mine:
                    self.waiters.pop(nid, None)
                if not self.waiters:
                    await self._drop()

    async def _drop(self) -> None:
        sub, self.sub = self.sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


_watches: weakref.WeakKeyDictionary[Any, StatusWatch] = weakref.WeakKeyDictionary()


def status_watch(engine: Any) -> StatusWatch:
    """The engine's watch (one per HTTP process and NATS connection)."""
    watch = _watches.get(engine)
    if watch is None or watch.nc is not engine.nc:
        watch = _watches[engine] = StatusWatch(engine.nc, engine.cfg.nats.prefix)
    return watch
