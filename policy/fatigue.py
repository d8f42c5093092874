"""Fatigue caps: at most ``limit`` notifications per person per calendar window.

A cap is a row of configuration (``[[preferences.fatigue.caps]]``)::

    [[preferences.fatigue.caps]]
    name = "daily"
    window = "day"        # hour | day | week: the calendar hour, day, Monday-week in the recipient's zone
    limit = 5             # sends in that window
    channels = ["push"]   # the channels counted together; empty: every channel
    category = "*"        # the category counted; "*": every one
    over = "hold"         # hold | digest: what happens to a send over the cap

A send that would make a cap's count exceed its limit is held until the window ends
(``Defer``, reason ``fatigue.<window>``) and decided again then, or, with ``over =
"digest"``, collected into the digest of the window (the bucket of the category's
hourly, daily or weekly digest that ends with it; its row says ``fatigue.<window>``)
and sent with the others when the window ends. When several caps are full, the one
whose window ends last decides. A send that is itself released or a digest is held. Requests of an exempt
priority (``critical``) or category (``security``, ``account``, ``transactional``)
are never capped and never counted.

What is counted: the sends providers took (outcomes ``sent``), by the UserShard
that owns the person, as they happen, and, for a person the shard has not counted
yet (a restart, a person read again), their sends recorded in the current windows
(``stores.tracking.recent_sends``). ``Ledger`` holds the counts; ``over`` is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from msgspec import Meta, Struct

from policy.email import DEFAULT_TRANSACTIONAL
from policy.types import Channel, Priority
from policy.windows import period_bounds

Window = Literal["hour", "day", "week"]
PERIOD: dict[str, str] = {"hour": "hourly", "day": "daily", "week": "weekly"}  # policy.windows.period_bounds
# the longest window, with a day's slack for zones and DST: how far back a count reaches
LOOKBACK_S = 8 * 86_400.0
# what the engine itself sends a person in answer to them (a consent confirmation text, the
# answer to a text they sent): it is not planned, so never capped nor counted as it goes,
# and it is left out when a person is counted from PostgreSQL (stores.tracking.recent_sends)
ENGINE_ANSWERS = ("consent_confirmation", "sms_reply")
MAX_CAPS = 20


class Cap(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,39}\Z")]
    window: Window
    limit: Annotated[int, Meta(ge=1, le=10_000)]
    channels: tuple[Channel, ...] = ()  # empty: every channel, counted together
    category: Annotated[str, Meta(min_length=1, max_length=100)] = "*"
    over: Literal["hold", "digest"] = "hold"  # a send over the cap: held to the window's end, or digested

    def covers(self, channel: str, category: str) -> bool:
        return (not self.channels or channel in self.channels) and (self.category == "*" or self.category == category)


class FatigueConfig(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    caps: Annotated[tuple[Cap, ...], Meta(max_length=MAX_CAPS)] = ()
    exempt_priorities: tuple[Priority, ...] = ("critical",)  # a misspelt one would cap what it meant to spare
    exempt_categories: tuple[str, ...] = DEFAULT_TRANSACTIONAL

    def __post_init__(self) -> None:
        names = [c.name for c in self.caps]
        if len(set(names)) != len(names):
            raise ValueError("preferences.fatigue.caps: two caps have one name")


class Over(Struct, frozen=True):
    """The cap a send would exceed, and when its window ends."""

    cap: Cap
    until: float

    @property
    def reason(self) -> str:
        return f"fatigue.{self.cap.window}"


# A person's counts: per cap (by its index), the end of the window counted and the
# sends in it, flat: [end0, n0, end1, n1, …]. A window that has ended counts 0.
Counts = list[float]
# Sends planned in the round being decided, not yet made: (user, cap index, window end) → n
Tally = dict[tuple[str, int, float], int]


class Fatigue:
    """A FatigueConfig compiled for the decisions."""

    def __init__(self, cfg: FatigueConfig):
        self.cfg = cfg
        self.caps = cfg.caps
        self.exempt_priorities = frozenset(cfg.exempt_priorities)
        self.exempt_categories = frozenset(cfg.exempt_categories)
        self._covers: dict[tuple[str, str], tuple[int, ...]] = {}  # (channel, category) → the caps covering it
        # (zone, window) → (start, end) of the window last asked for: a round asks for the
        # same few again and again, and period_bounds' own cache first reads the wall clock
        self._bounds: dict[tuple[str, str], tuple[float, float]] = {}

    def end_of(self, window: str, tz: ZoneInfo, at: float) -> float:
        """When the ``window`` (hour, day, week) holding ``at`` ends in ``tz``."""
        key = (tz.key, window)
        hit = self._bounds.get(key)
        if hit is not None and hit[0] <= at < hit[1]:
            return hit[1]
        if len(self._bounds) >= 4096:
            self._bounds.clear()
        bounds = self._bounds[key] = period_bounds(PERIOD[window], tz, at)
        return bounds[1]

    def exempt(self, priority: str, category: str) -> bool:
        return priority in self.exempt_priorities or category in self.exempt_categories

    def covering(self, channel: str, category: str) -> tuple[int, ...]:
        hit = self._covers.get((channel, category))
        if hit is None:
            hit = tuple(i for i, c in enumerate(self.caps) if c.covers(channel, category))
            if len(self._covers) < 10_000:  # categories are configured, but a request may name any
                self._covers[(channel, category)] = hit
        return hit

    def capped(self, channels: Iterable[str], category: str, priority: str) -> bool:
        """Whether any cap counts a send of this request on one of ``channels``."""
        return not self.exempt(priority, category) and any(self.covering(ch, category) for ch in channels)

    def over(self, counts: Counts | None, tally: Tally, user_id: str, channel: str, category: str, priority: str,
             tz: ZoneInfo, now: float) -> Over | None:
        """The cap one more send now would exceed (the one whose window ends last),
        or None: the send may go."""
        if self.exempt(priority, category):
            return None
        worst: Over | None = None
        for i in self.covering(channel, category):
            cap = self.caps[i]
            end = self.end_of(cap.window, tz, now)
            n = counts[2 * i + 1] if counts is not None and counts[2 * i] == end else 0
            n += tally.get((user_id, i, end), 0)
            if n >= cap.limit and (worst is None or end > worst.until):
                worst = Over(cap, end)
        return worst

    def plan(self, tally: Tally, user_id: str, channel: str, category: str, priority: str, tz: ZoneInfo,
             now: float) -> None:
        """Count a send decided in this round into ``tally`` (the round's next
        decisions for the same person see it)."""
        if self.exempt(priority, category):
            return
        for i in self.covering(channel, category):
            key = (user_id, i, self.end_of(self.caps[i].window, tz, now))
            tally[key] = tally.get(key, 0) + 1

    def add(self, counts: Counts | None, channel: str, category: str, priority: str, tz: ZoneInfo,
            at: float, now: float) -> Counts | None:
        """``counts`` with a send made at ``at`` counted (a new list when there was
        none and the send counts). Only a send in the current window of a cap
        counts: the windows that ended need nothing."""
        if self.exempt(priority, category):
            return counts
        for i in self.covering(channel, category):
            window = self.caps[i].window
            end = self.end_of(window, tz, now)
            if self.end_of(window, tz, at) != end:
                continue
            if counts is None:
                counts = [0.0] * (2 * len(self.caps))
            if counts[2 * i] != end:
                counts[2 * i], counts[2 * i + 1] = end, 0
            counts[2 * i + 1] += 1
        return counts


class Ledger:
    """A UserShard's counts, per person it owns. A send is counted when it is planned
    (``reserve``, so batches running at once for one person see each other's sends)
    and given back if it did not go (``give_back``). Bounded: people not in a batch
    now, least recently used first, go when there are more than ``max_users``; they
    are counted again from PostgreSQL when next needed."""

    def __init__(self, fatigue: Fatigue, max_users: int):
        self.fatigue, self.max_users = fatigue, max_users
        # person → counts; () counted, nothing in any current window. Absent: not counted yet
        self.counts: dict[str, Counts | tuple[()]] = {}
        self._busy: dict[str, int] = {}  # person → batches using their counts now (never evicted)

    def unknown(self, user_ids: Iterable[str]) -> list[str]:
        return [u for u in dict.fromkeys(user_ids) if u not in self.counts]

    def use(self, user_ids: Iterable[str]) -> list[str]:
        """Keep these people's counts while a batch plans with them; the people, for ``done``."""
        users = list(dict.fromkeys(user_ids))
        for u in users:
            self._busy[u] = self._busy.get(u, 0) + 1
        return users

    def done(self, users: list[str]) -> None:
        for u in users:
            n = self._busy.get(u, 0) - 1
            if n > 0:
                self._busy[u] = n
            else:
                self._busy.pop(u, None)
        self._trim()

    def seed(self, sends: Mapping[str, list[tuple[str, str, str, float]]], zones: Mapping[str, ZoneInfo],
             now: float) -> None:
        """Count the people in ``zones`` not counted meanwhile from their recorded sends,
        (channel, category, priority, at) each; a person with none counts 0."""
        for user_id, tz in zones.items():
            if user_id in self.counts:  # counted by another batch while this one read: theirs is newer
                continue
            counts: Counts | None = None
            for channel, category, priority, at in sends.get(user_id, ()):
                counts = self.fatigue.add(counts, channel, category, priority, tz, at, now)
            self.counts[user_id] = counts if counts is not None else ()
        self._trim()

    def get(self, user_id: str) -> Counts | None:
        """A person's counts (None: nothing counted in a current window, or not counted yet)."""
        counts = self.counts.get(user_id)
        return counts if counts else None

    def reserve(self, user_id: str, channel: str, category: str, priority: str, tz: ZoneInfo,
                now: float) -> None:
        """Count a send planned now (``give_back`` it if it does not go)."""
        counts = self.counts.pop(user_id, None)  # and back at the end: recently used
        if counts is None:
            return  # not counted yet: counted from PostgreSQL when next needed, this send with it
        self.counts[user_id] = self.fatigue.add(counts or None, channel, category, priority, tz, now, now) or ()

    def give_back(self, user_id: str, channel: str, category: str, priority: str, tz: ZoneInfo,
                  planned: float) -> None:
        """Take back a send counted at ``planned`` that did not go (failed, not tried)."""
        counts = self.counts.get(user_id)
        if not counts or self.fatigue.exempt(priority, category):
            return
        for i in self.fatigue.covering(channel, category):
            end = self.fatigue.end_of(self.fatigue.caps[i].window, tz, planned)
            if counts[2 * i] == end and counts[2 * i + 1] > 0:
                counts[2 * i + 1] -= 1

    def forget(self, user_id: str) -> None:
        self.counts.pop(user_id, None)

    def _trim(self) -> None:
        excess = len(self.counts) - self.max_users
        if excess <= 0:
            return
        victims = []
        for u in self.counts:  # least recently used first
            if u not in self._busy:
                victims.append(u)
                if len(victims) == excess:
                    break
        for u in victims:
            del self.counts[u]
