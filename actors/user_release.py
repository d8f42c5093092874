"""The UserShard's side of held notifications: writing deferred and digest
items when ``decide`` says so, and releasing what the Scheduler hands back when
it is due (a deferred notification decided again; a digest bucket sealed,
composed and sent once)."""

from __future__ import annotations

import time

import msgspec

from actors import schedule_store, user_store
from actors.schedule_store import Due, Held
from policy import wire
from policy.decide import digest_key, zone
from policy.digest import compose
from policy.types import Decision, Message, NotificationRequest, Outcome
from policy.windows import period_bounds


_REQUEST_FIELDS = [f for f in msgspec.structs.fields(NotificationRequest)]


def as_notification(req: Message, user_id: str, nid: str) -> NotificationRequest:
    """The single-user form of a request (a broadcast recipient's, too), as held rows store it."""
    if isinstance(req, NotificationRequest):
        return req
    data = {f.name: getattr(req, f.name) for f in _REQUEST_FIELDS if f.name != "user_id" and hasattr(req, f.name)}
    return NotificationRequest(user_id=user_id, **data)


def held(nid: str, user_id: str, req: Message, d: Decision, parent_id: str | None = None) -> Held:
    kind = "digest" if d.action == "digest" else "deferred"
    frequency = d.reason.split(".", 1)[1] if kind == "digest" else None
    return Held(kind, nid, d.channel, user_id, req.category, req.priority, d.reason, d.until or time.time(),
                wire.encode(as_notification(req, user_id, nid)), req.accepted_at or time.time(),
                d.digest_key, frequency, parent_id)


def fallback_check(nid: str, user_id: str, req: Message, now: float) -> Held:
    """Held under the channel name "fallback": at ``now + fallback_after_s`` the
    Scheduler brings it back, and the fallback channels go out unless the
    notification was answered by then (``answered``)."""
    return Held("fallback", nid, "fallback", user_id, req.category, req.priority, "fallback.check",
                now + (req.fallback_after_s or 0.0), wire.encode(as_notification(req, user_id, nid)),
                req.accepted_at or now)


def answered(unless: str | None, statuses: set[str], engaged: bool) -> bool:
    """Whether a due fallback check finds its notification answered: opened or
    clicked on a channel (``engaged``: an engagement event), or, unless
    ``fallback_unless`` is "opened", a channel delivered (``statuses``: its
    channels' tracking statuses). An open implies delivery, so it always counts."""
    return engaged or (unless != "opened" and "delivered" in statuses)


def next_period(tz_of):
    """For ``schedule_store.hold``: the bucket after a sealed one."""
    def step(it: Held) -> tuple[str, float]:
        _, end = period_bounds(it.frequency, tz_of(it.user_id), it.due_at)
        return digest_key(it.user_id, it.channel, it.category, it.frequency, end), end
    return step


class ReleaseMixin:
    """Mixed into UserShard (needs ``pool``, ``users``, ``policy``, ``available``,
    ``_ready``, ``_load_missing``, ``_decide_and_send``)."""

    def _tz_of(self, user_id: str):
        state = self.users.get(user_id)
        return zone(state.timezone if state else "UTC")

    async def _hold(self, items: list[Held]) -> None:
        if items:
            items.sort(key=lambda it: (it.digest_key or "", it.notification_id, it.channel))  # one lock order
            async with self.pool.acquire() as conn:
                await schedule_store.hold(conn, items, next_period(self._tz_of))

    async def release(self, payload: bytes) -> dict:
        """Due items from the Scheduler (list[Due]): deferred notifications are
        decided again (never collected into a digest), digest buckets are sealed
        and sent as one notification each. Returns when all is committed."""
        await self._ready()
        dues = wire.decode(payload, list[Due])
        async with self.pool.acquire() as conn:
            await self._load_missing(conn, list({d.user_id for d in dues}))
        deferred = [d for d in dues if d.kind == "deferred"]
        buckets = [d for d in dues if d.kind == "digest"]
        checks = [d for d in dues if d.kind == "fallback"]
        counts = {"deferred": len(deferred), "digests": 0, "items": 0, "fallback_checks": len(checks)}
        errors: list[BaseException] = []
        if checks:
            try:
                await self._release_fallback(checks)
            except Exception as e:  # noqa: BLE001 - the others still go; the claim comes back
                errors.append(e)
        if deferred:
            try:
                await self._release_deferred(deferred)
            except Exception as e:  # noqa: BLE001 - the buckets still go; the claim comes back
                errors.append(e)
        for b in buckets:  # each on its own: one that fails does not hold back the others
            try:
                counts["items"] += await self._send_digest(b)
                counts["digests"] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors:
            raise errors[0]
        return counts

    async def _release_deferred(self, dues: list[Due]) -> None:
        # One item per notification, deciding only the channels that were claimed:
        # its other channels were settled already or are held on their own.
        claimed: dict[str, list[str]] = {}
        first: dict[str, Due] = {}
        for d in dues:
            if d.channel not in claimed.setdefault(d.key, []):
                claimed[d.key].append(d.channel)
            first.setdefault(d.key, d)
        items = [(nid, d.user_id, msgspec.structs.replace(wire.decode(d.request, NotificationRequest),
                                                           channels=claimed[nid]))
                 for nid, d in first.items()]
        async with self.pool.acquire() as conn:
            done = await user_store.recorded(conn, [nid for nid, _, _ in items], final_only=True)
        outcomes, error = await self._decide_and_send(items, done, self.users, digest=False)
        finished = {(o.notification_id, o.channel) for o in outcomes}
        settled = [(d.key, d.channel) for d in dues if (d.key, d.channel) in finished or (d.key, d.channel) in done]
        async with self.pool.acquire() as conn:
            await schedule_store.finish(conn, outcomes, settled, [])
        if error is not None:
            raise error

    async def _release_fallback(self, dues: list[Due]) -> None:
        """Fallback checks that are due: a notification not ``answered`` goes out
        on its fallback channels, in order."""
        reqs = {d.key: (d.user_id, wire.decode(d.request, NotificationRequest)) for d in dues}
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT notification_id::text, channel, status FROM delivery_tracking "
                "WHERE notification_id = ANY($1::uuid[])", list(reqs))
            engaged = {r[0] for r in await conn.fetch(
                "SELECT DISTINCT notification_id::text FROM engagement_events "
                "WHERE notification_id = ANY($1::uuid[])", list(reqs))}
        statuses: dict[str, set[str]] = {}
        for r in rows:
            statuses.setdefault(r[0], set()).add(r[2])
        recorded = {(r[0], r[1]) for r in rows if r[2] != "deferred"}
        items, done = [], set()
        for nid, (uid, req) in reqs.items():
            if answered(req.fallback_unless, statuses.get(nid, set()), nid in engaged):
                continue
            ahead = [ch for ch in req.fallback if ch not in req.channels]
            if not ahead:
                continue
            done |= {(n, c) for n, c in recorded if n == nid and c in ahead}
            items.append((nid, uid, msgspec.structs.replace(req, channels=ahead[:1], fallback=ahead[1:],
                                                            fallback_after_s=None, fallback_unless=None)))
        outcomes: list[Outcome] = []
        if items:
            outcomes, error = await self._decide_and_send(items, done, self.users)
            if error is not None:
                raise error
        async with self.pool.acquire() as conn:
            await schedule_store.finish(conn, outcomes, [(d.key, "fallback") for d in dues], [])

    async def _send_digest(self, due: Due) -> int:
        key = due.key
        async with self.pool.acquire() as conn:
            found = await schedule_store.seal(conn, key)
        nid = schedule_store.digest_id(key)
        _, channel, category, frequency, _ = key.rsplit("|", 4)
        outcomes: list[Outcome] = []
        if found:
            items = [(i, wire.decode(r, NotificationRequest)) for i, r in found]
            first = items[0][1]
            digest = NotificationRequest(user_id=due.user_id, category=category, channels=[channel],
                                         id=None, priority="normal", metadata={"digest": key},
                                         content=compose(items, category, frequency),
                                         content_type=first.content_type, accepted_at=self.clock())
            async with self.pool.acquire() as conn:
                done = await user_store.recorded(conn, [nid], final_only=True)
            outcomes, error = await self._decide_and_send([(nid, due.user_id, digest)], done, self.users,
                                                          digest=False)
            if error is not None:
                raise error
        async with self.pool.acquire() as conn:
            await schedule_store.finish(conn, outcomes, [], [(key, [i for i, _ in found])])
        return len(found)
