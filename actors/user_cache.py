"""The UserShard's users, held compactly.

A ``UserState`` object with its dicts costs ~630 bytes in CPython; 10M users
would need ~6 GiB. Here each user is one ``bytes`` value: MessagePack of an
array-like Struct without the user id (the key holds it), the time zone as
an index into a table of names, and trailing defaults left out, so a user on
the defaults with an email address is ~35 bytes of payload. A state is decoded when it is read (well under a
microsecond); template chains are not stored per user but attached on read
from the shard's template cache.

Each user's engagement state (``Engagement``: the send-time profile and the
channel counts the UserShard read for them) lives in the same value, ahead of
the state, so a person with both costs one key and one object, not three of
each: ~640 bytes a person in separate dicts, ~60 here.

Bounded: at most ``max_users`` are held; when one more comes, one goes, chosen
by CLOCK (second chance): a pass walks the users in the order they came, and
drops the first one not read or written since the pass last went by it (a
read or write marks the user; the pass clears the mark as it spares one). It
keeps the users in use, as least-recently-used does, in a plain dict: an
OrderedDict's links cost ~50 bytes a user (measured: 80 against 31 bytes an
entry at 1M). PostgreSQL is the truth, so a dropped user is simply read again
when next needed. Callers therefore never assume an owned user is held: a call
reads what it needs with ``begin_load`` / ``add_loaded`` and decides on the
``Pinned`` view of those states, which an eviction meanwhile cannot empty."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import compress
from typing import TypeVar

import msgspec

from policy.prefs import Preference
from policy.timing import HOURS
from policy.types import Device, UserState
from stores.state import decode_stored

T = TypeVar("T")


class Packed(msgspec.Struct, array_like=True, omit_defaults=True):
    """UserState without user_id and templates, the address channels as indexes
    into the cache's table; fields most often set first (omit_defaults drops the
    trailing ones that are default)."""

    addresses: dict[int, str] = {}
    zone: int = 0  # index into the cache's table of time zone names (0: UTC)
    locale: str = "en"
    version: int = 0
    prefs: tuple[Preference, ...] = ()
    template: str | None = None
    consent: tuple[str, ...] = ()
    suppressed: dict[str, str] = {}
    consent_until: dict[str, float] = {}
    consent_state: dict[str, str] = {}
    devices: tuple[Device, ...] = ()


class Engagement(msgspec.Struct, kw_only=True):
    """What a UserShard read of a person's engagement, held with their state:
    the send-time profile (policy/timing.py) in the local hours of ``zone``, read
    at ``profile_at``; the channel counts (policy/choice.py), read at
    ``stats_at``. None: that half is not held."""

    profile_at: float | None = None
    profile: bytes = b""
    zone: str = "UTC"
    stats_at: float | None = None
    stats: dict[str, tuple[int, int]] = {}


class _Engaged(msgspec.Struct, array_like=True, omit_defaults=True):
    """``Engagement`` as held: the read times in milliseconds since the cache
    began, rounded up (``UserCache._ms``); the zone and the channels indexes into
    the cache's tables; the profile dense (a count per hour) or, when shorter,
    sparse ((hour, count) pairs: most people read at a few hours)."""

    profile_at: int | None = None
    profile: bytes = b""
    zone: int = 0
    stats_at: int | None = None
    stats: dict[int, tuple[int, int]] = {}


def _sparse(profile: bytes) -> bytes:
    if profile.count(0) <= HOURS // 2:  # pairs would be no shorter
        return profile
    pairs: list[int] = []
    for hour in compress(range(HOURS), profile):  # the hours with a count
        pairs += (hour, profile[hour])
    return bytes(pairs)


def _dense(held: bytes) -> bytes:
    if len(held) == HOURS:
        return held
    profile = bytearray(HOURS)
    for i in range(0, len(held), 2):
        profile[held[i]] = held[i + 1]
    return bytes(profile)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Packed).decode
_decode_engaged = msgspec.msgpack.Decoder(_Engaged).decode

# A held value: a byte of flags (MARKED: read or written since the eviction pass last
# went by; PROFILE, STATS: which halves of an engagement it holds, the engagement then
# following after a byte of its length), then the state.
MARKED, PROFILE, STATS = 1, 2, 4
ENGAGED = PROFILE | STATS
MAX_ENGAGEMENT = 255  # bytes: ~40 typically, ~190 at most with all seven channels counted near 2**64


def _split(blob: bytes) -> int:
    """Where a held value's state begins."""
    return 2 + blob[1] if blob[0] & ENGAGED else 1


def _key(user_id: str) -> bytes:
    # bytes keys: 16 bytes less a user than str ones (an ASCII id of 13: 48 against 64
    # allocated); surrogatepass (only where needed: it is slower), so that every str
    # comes back as it went in
    try:
        return user_id.encode()
    except UnicodeEncodeError:
        return user_id.encode("utf-8", "surrogatepass")


def _id(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")


class UserCache(Mapping[str, UserState]):
    """``user id -> UserState``, stored packed, at most ``max_users`` (None: no
    bound), CLOCK out (see the module). ``templates`` maps a template id to its
    chain; a state read here gets its chain from it. ``dropped(user, engagement)``,
    if set, is told of each engagement that leaves with its user (evicted or
    popped), so what was summed from it can be taken out."""

    def __init__(self, templates: dict[str, tuple] | None = None, max_users: int | None = None):
        self._blobs: dict[bytes, bytes] = {}  # in the order they came
        self.max_users = max_users
        self.evicted = 0
        # the eviction pass: the users held when it began, in order, and how far it got
        # (a passed slot is cleared, so the pass keeps no dropped user's id alive)
        self._pass: list[bytes | None] = []
        self._hand = 0
        self._base = math.floor(time.time() * 1000)  # read times are held as milliseconds since then
        self.dropped: Callable[[str, Engagement], None] | None = None
        self.profiles_held = self.stats_held = 0  # people with each half of an engagement held
        self._writes = 0  # counts writes: a load's token is the count when it began
        self._loads: dict[int, int] = {}  # token -> loads in flight that began then
        self._written: OrderedDict[str, int] = OrderedDict()  # user -> its last write, while loads are in flight
        self.templates = templates if templates is not None else {}
        self._zones: list[str] = ["UTC"]  # a few hundred names at most, each stored once
        self._zone_ix: dict[str, int] = {"UTC": 0}
        self._channels: list[str] = []  # the channels of addresses and counts, each name stored once
        self._channel_ix: dict[str, int] = {}
        self._template_ids: set[str] = set()  # every template a held user followed

    @staticmethod
    def _index(name: str, names: list[str], ix: dict[str, int]) -> int:
        i = ix.get(name)
        if i is None:
            i = ix[name] = len(names)
            names.append(name)
        return i

    def _pack(self, s: UserState) -> bytes:
        return self._packed(s.addresses, s.timezone, s.locale, s.version, s.prefs, s.template,
                            tuple(sorted(s.consent)), s.suppressed, s.consent_until, s.consent_state, s.devices)

    def _packed(self, addresses: Mapping[str, str], timezone: str, locale: str, version: int, prefs: tuple,
                template: str | None, *rest) -> bytes:
        """``Packed`` of a state's fields (in its order), names to the cache's indexes."""
        if template:
            self._template_ids.add(template)
        return _encode(Packed(self._channel_keys(addresses), self._index(timezone, self._zones, self._zone_ix),
                              locale, version, prefs, template, *rest))

    def _channel_keys(self, by_name: Mapping[str, T]) -> dict[int, T]:
        # a channel's index is one byte in MessagePack, its name up to nine: ~6 bytes a user
        names, ix = self._channels, self._channel_ix
        return {self._index(ch, names, ix): v for ch, v in by_name.items()}

    def _unpack(self, user_id: str, blob: bytes) -> UserState:
        p = _decode(blob[_split(blob):])  # a copy of the slice is quicker than a memoryview's
        names = self._channels
        return UserState(user_id=user_id, addresses={names[c]: a for c, a in p.addresses.items()}, prefs=p.prefs,
                         templates=self.templates.get(p.template, ()) if p.template else (),
                         template=p.template, consent=frozenset(p.consent), suppressed=p.suppressed,
                         timezone=self._zones[p.zone], locale=p.locale, version=p.version,
                         consent_until=p.consent_until, consent_state=p.consent_state, devices=p.devices)

    def _hold(self, user_id: str, packed: bytes) -> None:
        """Hold ``packed`` as the user's state, marked used, their engagement kept."""
        key = _key(user_id)
        old = self._blobs.get(key)
        if old is None:
            self._blobs[key] = b"\x01" + packed
            if self.max_users is not None:
                while len(self._blobs) > self.max_users:
                    self._evict()
        else:
            self._blobs[key] = bytes((old[0] | MARKED,)) + old[1:_split(old)] + packed

    def _evict(self) -> None:
        blobs = self._blobs
        while True:
            if self._hand >= len(self._pass):
                self._pass, self._hand = list(blobs), 0
            key = self._pass[self._hand]
            self._pass[self._hand] = None
            self._hand += 1
            blob = blobs.get(key) if key is not None else None
            if blob is None:
                continue
            if blob[0] & MARKED:  # used since the pass last came by: spared, unmarked
                blobs[key] = bytes((blob[0] & ~MARKED,)) + blob[1:]
                continue
            del blobs[key]
            self.evicted += 1
            self._let_go(key, blob)
            return

    def _let_go(self, key: bytes, blob: bytes) -> None:
        if blob[0] & ENGAGED:
            self._count(blob[0], -1)
            if self.dropped is not None:
                self.dropped(_id(key), self._engagement(blob))

    def _count(self, flags: int, sign: int) -> None:
        self.profiles_held += sign * bool(flags & PROFILE)
        self.stats_held += sign * bool(flags & STATS)

    def _engagement(self, blob: bytes) -> Engagement:
        e = _decode_engaged(memoryview(blob)[2:_split(blob)])
        names = self._channels
        return Engagement(profile_at=self._time(e.profile_at),
                          profile=_dense(e.profile) if e.profile_at is not None else b"",
                          zone=self._zones[e.zone], stats_at=self._time(e.stats_at),
                          stats={names[c]: counts for c, counts in e.stats.items()})

    def _ms(self, at: float | None) -> int | None:
        """A read time as held: milliseconds since the cache began, 5 bytes in MessagePack
        for 49 days (9 after) against a float's 9. Rounded up, so a fed event recorded
        before the read is never counted again; one recorded less than a millisecond
        after it, and missed by it, is not counted at all. Within a microsecond above a
        whole millisecond counts as on it: a time read back (``_time``) is that far off
        in the float, and must be held as the same millisecond again."""
        return None if at is None else math.ceil(at * 1000 - 0.001) - self._base

    def _time(self, ms: int | None) -> float | None:
        return None if ms is None else (self._base + ms) / 1000

    def engagement(self, user_id: str) -> Engagement | None:
        """The user's engagement held, if they are held and have one (not a use)."""
        blob = self._blobs.get(_key(user_id))
        return self._engagement(blob) if blob is not None and blob[0] & ENGAGED else None

    def set_engagement(self, user_id: str, eng: Engagement | None) -> bool:
        """Hold ``eng`` (None or both halves None: forget it) with the user; False
        if the user is not held (it is not kept then)."""
        key = _key(user_id)
        blob = self._blobs.get(key)
        if blob is None:
            return False
        self._count(blob[0], -1)
        state = blob[_split(blob):]
        flags = 0 if eng is None else PROFILE * (eng.profile_at is not None) | STATS * (eng.stats_at is not None)
        if eng is None or not flags:
            self._blobs[key] = bytes((blob[0] & ~ENGAGED,)) + state
            return True
        packed = _encode(_Engaged(
            self._ms(eng.profile_at), _sparse(eng.profile) if eng.profile_at is not None else b"",
            self._index(eng.zone, self._zones, self._zone_ix), self._ms(eng.stats_at), self._channel_keys(eng.stats)))
        if len(packed) > MAX_ENGAGEMENT:  # not held, nor what was: read again when next needed
            self._blobs[key] = bytes((blob[0] & ~ENGAGED,)) + state
            if blob[0] & ENGAGED and self.dropped is not None:
                self.dropped(user_id, self._engagement(blob))
            return False
        self._count(flags, 1)
        self._blobs[key] = bytes((blob[0] & MARKED | flags, len(packed))) + packed + state
        return True

    def _wrote(self, user_id: str) -> None:
        """A write-through: remembered while a load is in flight, so the load
        does not put back the older state it read (see ``add_loaded``)."""
        self._writes += 1
        if self._loads:
            self._written[user_id] = self._writes
            self._written.move_to_end(user_id)

    def _used(self, key: bytes, blob: bytes) -> bytes:
        """``blob`` marked used (held so): the next eviction pass spares it."""
        if not blob[0] & MARKED:
            self._blobs[key] = blob = bytes((blob[0] | MARKED,)) + blob[1:]
        return blob

    def get(self, user_id: str, default=None):
        key = _key(user_id)
        blob = self._blobs.get(key)
        return default if blob is None else self._unpack(user_id, self._used(key, blob))

    def __getitem__(self, user_id: str) -> UserState:
        state = self.get(user_id)
        if state is None:
            raise KeyError(user_id)
        return state

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and _key(user_id) in self._blobs

    def __iter__(self) -> Iterator[str]:
        return map(_id, self._blobs)

    def __len__(self) -> int:
        return len(self._blobs)

    def __setitem__(self, user_id: str, state: UserState) -> None:
        self._wrote(user_id)
        self._hold(user_id, self._pack(state))

    def put_stored(self, user_id: str, blob: bytes, suppressed: dict[str, str] | None = None) -> None:
        """Hold a ``users.state`` value and the user's suppressed addresses (which
        it does not carry): a warm start, no UserState built."""
        self._wrote(user_id)
        self._hold(user_id, self._pack_stored(blob, suppressed))

    def _pack_stored(self, blob: bytes, suppressed: dict[str, str] | None) -> bytes:
        p = decode_stored(blob)
        return self._packed(p.addresses, p.timezone, p.locale, p.version, p.prefs, p.template, p.consent,
                            suppressed or {}, p.consent_until, p.consent_state, p.devices)

    def loading(self, token: int) -> WarmSink:
        """Where a warm start begun at ``token`` (``begin_load``) puts what it
        reads, beside the writes and loads of a running shard."""
        return WarmSink(self, token)

    def _stale_since(self, user_id: str, token: int) -> bool:
        """Written after a load began at ``token``: what that load read is older."""
        return self._written.get(user_id, 0) > token

    def update(self, states: Mapping[str, UserState]) -> None:
        for uid, state in states.items():
            self[uid] = state

    def pop(self, user_id: str, default=None):
        """Forget the user, their engagement with them."""
        self._wrote(user_id)
        key = _key(user_id)
        blob = self._blobs.pop(key, None)
        if blob is None:
            return default
        self._let_go(key, blob)
        return self._unpack(user_id, blob)

    def held(self, user_ids: Iterable[str]) -> dict[str, bytes]:
        """The packed states of those of ``user_ids`` held now (references: no
        copy, nothing decoded), for a ``Pinned`` view to fall back on. They are
        about to be used: marked, so the loads of the same call spare them (and
        their engagement) if they can."""
        out = {}
        for uid in user_ids:
            key = _key(uid)
            blob = self._blobs.get(key)
            if blob is not None:
                out[uid] = self._used(key, blob)
        return out

    def begin_load(self) -> int:
        """Before reading users from PostgreSQL: the token to give ``add_loaded``."""
        token = self._writes
        self._loads[token] = self._loads.get(token, 0) + 1
        return token

    def add_loaded(self, token: int, states: Mapping[str, UserState]) -> None:
        """Hold what a read begun at ``token`` found, except users held already
        or written since it began (a write that committed while the read ran is
        newer, even if it was evicted since), and end that load."""
        try:
            for uid, state in states.items():
                if uid not in self and self._written.get(uid, 0) <= token:
                    self._hold(uid, self._pack(state))
        finally:
            self.end_load(token)

    def end_load(self, token: int) -> None:
        """A load ended (``add_loaded`` calls it; call it alone for one that failed)."""
        left = self._loads[token] - 1
        if left:
            self._loads[token] = left
        else:
            del self._loads[token]
        oldest = min(self._loads, default=self._writes)
        while self._written and next(iter(self._written.values())) <= oldest:  # no load in flight cares
            self._written.popitem(last=False)

    def template_ids(self) -> set[str]:
        """Templates held users follow (or followed: a superset, never missing one)."""
        return set(self._template_ids)


class WarmSink:
    """``stores.state.scan_shard``'s sink for a warm start that runs while the
    shard works: like ``add_loaded``, it never puts back a user already held or
    written since the scan began (what it read is older), and being a load, not
    a write, it leaves other loads' tokens alone."""

    def __init__(self, cache: UserCache, token: int):
        self.cache, self.token = cache, token

    def put_stored(self, user_id: str, blob: bytes, suppressed: dict[str, str] | None = None) -> None:
        if user_id not in self.cache and not self.cache._stale_since(user_id, self.token):
            self.cache._hold(user_id, self.cache._pack_stored(blob, suppressed))

    def update(self, states: Mapping[str, UserState]) -> None:
        for uid, state in states.items():
            if uid not in self.cache and not self.cache._stale_since(uid, self.token):
                self.cache._hold(uid, self.cache._pack(state))


class Pinned(Mapping[str, UserState]):
    """The states one call decides on: each user's state in the cache (the
    newest; reading it keeps the user there), else the one the call had when it
    began (``held``: the user was evicted since, by this call's own loads or
    another's) or read itself (``loaded``). ``user_ids``: the users it asked for."""

    def __init__(self, cache: UserCache, held: dict[str, bytes], loaded: Mapping[str, UserState],
                 user_ids: Iterable[str]):
        self.cache, self.held, self.loaded = cache, held, loaded
        self.user_ids = list(dict.fromkeys(user_ids))

    def get(self, user_id: str, default=None):
        state = self.cache.get(user_id)
        if state is not None:
            return state
        blob = self.held.get(user_id)
        if blob is not None:
            return self.cache._unpack(user_id, blob)
        return self.loaded.get(user_id, default)

    def __getitem__(self, user_id: str) -> UserState:
        state = self.get(user_id)
        if state is None:
            raise KeyError(user_id)
        return state

    def __iter__(self) -> Iterator[str]:
        return (uid for uid in self.user_ids if uid in self.cache or uid in self.held or uid in self.loaded)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Half(Mapping[str, tuple]):
    """One half of the engagement held, by user, as ``policy.plan`` reads it."""

    def __init__(self, cache: UserCache):
        self.cache = cache

    def _of(self, eng: Engagement) -> tuple | None:
        raise NotImplementedError

    def get(self, user_id: str, default=None):
        eng = self.cache.engagement(user_id)
        held = self._of(eng) if eng is not None else None
        return default if held is None else held

    def __getitem__(self, user_id: str) -> tuple:
        held = self.get(user_id)
        if held is None:
            raise KeyError(user_id)
        return held

    def __iter__(self) -> Iterator[str]:
        return (uid for uid in self.cache if uid in self)

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and self.get(user_id) is not None

    def _put(self, user_id: str, **half) -> bool:
        """Hold this half's fields, the other half as it is; False if the user is not held (nor is it)."""
        eng = self.cache.engagement(user_id) or Engagement()
        return self.cache.set_engagement(user_id, msgspec.structs.replace(eng, **half))


class Profiles(_Half):
    """The send-time profiles held: user → (when read, profile, its zone name)."""

    def _of(self, eng: Engagement) -> tuple | None:
        return None if eng.profile_at is None else (eng.profile_at, eng.profile, eng.zone)

    def put(self, user_id: str, at: float, profile: bytes, zone: str) -> bool:
        """Hold a profile read at ``at`` (False: the user is not held, nor is it)."""
        return self._put(user_id, profile_at=at, profile=profile, zone=zone)

    def __len__(self) -> int:
        return self.cache.profiles_held


class ChannelCounts(_Half):
    """The channel counts held: user → (when read, channel → (sent, engaged))."""

    def _of(self, eng: Engagement) -> tuple | None:
        return None if eng.stats_at is None else (eng.stats_at, eng.stats)

    def put(self, user_id: str, at: float | None, stats: dict[str, tuple[int, int]]) -> bool:
        """Hold counts read at ``at`` (None: forget them); False if the user is not held."""
        return self._put(user_id, stats_at=at, stats=stats if at is not None else {})

    def __len__(self) -> int:
        return self.cache.stats_held
