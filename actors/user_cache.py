"""The UserShard's users, held compactly.

A ``UserState`` object with its dicts costs ~630 bytes in CPython; 10M users
would need ~6 GiB. Here each user is one ``bytes`` value: MessagePack of an
array-like Struct without the user id (the key holds it), the time zone as
an index into a table of names, and trailing defaults left out, so a user on
the defaults with an email address is ~35 bytes of payload. A state is decoded when it is read (well under a
microsecond); template chains are not stored per user but attached on read
from the shard's template cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import msgspec

from policy.prefs import Preference
from policy.types import UserState
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


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Packed).decode


class UserCache(Mapping[str, UserState]):
    """``user id -> UserState``, stored packed. ``templates`` maps a template id
    to its chain; a state read here gets its chain from it."""

    def __init__(self, templates: dict[str, tuple] | None = None):
        self._blobs: dict[str, bytes] = {}
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
                              tuple(sorted(s.consent)), s.suppressed))

    def _unpack(self, user_id: str, blob: bytes) -> UserState:
        p = _decode(blob)
        return UserState(user_id=user_id, addresses=p.addresses, prefs=p.prefs,
                         templates=self.templates.get(p.template, ()) if p.template else (),
                         template=p.template, consent=frozenset(p.consent), suppressed=p.suppressed,
                         timezone=self._zones[p.zone], locale=p.locale, version=p.version)

    def __getitem__(self, user_id: str) -> UserState:
        return self._unpack(user_id, self._blobs[user_id])

    def get(self, user_id: str, default=None):
        blob = self._blobs.get(user_id)
        return default if blob is None else self._unpack(user_id, blob)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._blobs

    def __iter__(self) -> Iterator[str]:
        return iter(self._blobs)

    def __len__(self) -> int:
        return len(self._blobs)

    def __setitem__(self, user_id: str, state: UserState) -> None:
        self._blobs[user_id] = self._pack(state)

    def put_stored(self, user_id: str, blob: bytes) -> None:
        """Hold a ``users.state`` value (a warm start: no UserState built)."""
        p = decode_stored(blob)
        if p.template:
            self._template_ids.add(p.template)
        zone = self._zone_ix.get(p.timezone)
        if zone is None:
            zone = self._zone_ix[p.timezone] = len(self._zones)
            self._zones.append(p.timezone)
        self._blobs[user_id] = _encode(Packed(p.addresses, zone, p.locale, p.version, p.prefs, p.template,
                                              p.consent))

    def setdefault(self, user_id: str, state: UserState) -> None:
        if user_id not in self._blobs:
            self._blobs[user_id] = self._pack(state)

    def update(self, states: Mapping[str, UserState]) -> None:
        for uid, state in states.items():
            self._blobs[uid] = self._pack(state)

    def pop(self, user_id: str, default=None):
        blob = self._blobs.pop(user_id, None)
        return default if blob is None else self._unpack(user_id, blob)

    def template_ids(self) -> set[str]:
        """Templates held users follow (or followed: a superset, never missing one)."""
        return set(self._template_ids)
