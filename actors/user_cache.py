"""The UserShard's users, held compactly.

A ``UserState`` object with its dicts costs ~630 bytes in CPython; 10M users
would need ~6 GiB. Here each user is one ``bytes`` value: MessagePack of an
array-like Struct without the user id (the key holds it), the time zone as
an index into a table of names, and trailing defaults left out, so a user on
the defaults with an email address is ~35 bytes of payload. A state is decoded when it is read (well under a
microsecond); template chains are not stored per user but attached on read
from the shard's template cache.

Bounded: at most ``max_users`` are held; the least recently used is dropped
(PostgreSQL is the truth, so a dropped user is simply read again when next
needed). Callers therefore never assume an owned user is held: a call reads
what it needs with ``begin_load`` / ``add_loaded`` and decides on the
``Pinned`` view of those states, which an eviction meanwhile cannot empty.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping

import msgspec

from policy.prefs import Preference
from policy.types import Device, UserState
from stores.state import decode_stored


class Packed(msgspec.Struct, array_like=True, omit_defaults=True):
    """UserState without user_id and templates; fields most often set first
    (omit_defaults drops the trailing ones that are default)."""

    addresses: dict[str, str] = {}
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


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Packed).decode


class UserCache(Mapping[str, UserState]):
    """``user id -> UserState``, stored packed, at most ``max_users`` (None: no
    bound), least recently used first out. ``templates`` maps a template id to
    its chain; a state read here gets its chain from it."""

    def __init__(self, templates: dict[str, tuple] | None = None, max_users: int | None = None):
        # An OrderedDict, oldest first: a plain dict whose first key is deleted
        # again and again is scanned past the deleted slots (measured: ~100 µs per
        # eviction at 200k users), OrderedDict.popitem(last=False) is O(1).
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self.max_users = max_users
        self.evicted = 0
        self._writes = 0  # counts writes: a load's token is the count when it began
        self._loads: dict[int, int] = {}  # token -> loads in flight that began then
        self._written: OrderedDict[str, int] = OrderedDict()  # user -> its last write, while loads are in flight
        self.templates = templates if templates is not None else {}
        self._zones: list[str] = ["UTC"]  # a few hundred names at most, each stored once
        self._zone_ix: dict[str, int] = {"UTC": 0}
        self._template_ids: set[str] = set()  # every template a held user followed

    def _pack(self, s: UserState) -> bytes:
        if s.template:
            self._template_ids.add(s.template)
        zone = self._zone_ix.get(s.timezone)
        if zone is None:
            zone = self._zone_ix[s.timezone] = len(self._zones)
            self._zones.append(s.timezone)
        return _encode(Packed(s.addresses, zone, s.locale, s.version, s.prefs, s.template,
                              tuple(sorted(s.consent)), s.suppressed, s.consent_until, s.consent_state, s.devices))

    def _unpack(self, user_id: str, blob: bytes) -> UserState:
        p = _decode(blob)
        return UserState(user_id=user_id, addresses=p.addresses, prefs=p.prefs,
                         templates=self.templates.get(p.template, ()) if p.template else (),
                         template=p.template, consent=frozenset(p.consent), suppressed=p.suppressed,
                         timezone=self._zones[p.zone], locale=p.locale, version=p.version,
                         consent_until=p.consent_until, consent_state=p.consent_state, devices=p.devices)

    def _hold(self, user_id: str, blob: bytes) -> None:
        self._blobs[user_id] = blob
        self._blobs.move_to_end(user_id)
        if self.max_users is not None:
            while len(self._blobs) > self.max_users:
                self._blobs.popitem(last=False)
                self.evicted += 1

    def _wrote(self, user_id: str) -> None:
        """A write-through: remembered while a load is in flight, so the load
        does not put back the older state it read (see ``add_loaded``)."""
        self._writes += 1
        if self._loads:
            self._written[user_id] = self._writes
            self._written.move_to_end(user_id)

    def __getitem__(self, user_id: str) -> UserState:
        blob = self._blobs[user_id]
        self._blobs.move_to_end(user_id)  # used: the last to go
        return self._unpack(user_id, blob)

    def get(self, user_id: str, default=None):
        blob = self._blobs.get(user_id)
        if blob is None:
            return default
        self._blobs.move_to_end(user_id)
        return self._unpack(user_id, blob)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._blobs

    def __iter__(self) -> Iterator[str]:
        return iter(self._blobs)

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
        if p.template:
            self._template_ids.add(p.template)
        zone = self._zone_ix.get(p.timezone)
        if zone is None:
            zone = self._zone_ix[p.timezone] = len(self._zones)
            self._zones.append(p.timezone)
        return _encode(Packed(p.addresses, zone, p.locale, p.version, p.prefs, p.template, p.consent,
                              suppressed or {}, p.consent_until, p.consent_state, p.devices))

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
        self._wrote(user_id)
        blob = self._blobs.pop(user_id, None)
        return default if blob is None else self._unpack(user_id, blob)

    def held(self, user_ids: Iterable[str]) -> dict[str, bytes]:
        """The packed states of those of ``user_ids`` held now (references: no
        copy, nothing decoded), for a ``Pinned`` view to fall back on."""
        blobs = self._blobs
        return {uid: blob for uid in user_ids if (blob := blobs.get(uid)) is not None}

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
                if uid not in self._blobs and self._written.get(uid, 0) <= token:
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
        if user_id not in self.cache._blobs and not self.cache._stale_since(user_id, self.token):
            self.cache._hold(user_id, self.cache._pack_stored(blob, suppressed))

    def update(self, states: Mapping[str, UserState]) -> None:
        for uid, state in states.items():
            if uid not in self.cache._blobs and not self.cache._stale_since(uid, self.token):
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
