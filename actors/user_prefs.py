"""The UserShard's preference operations: read, change (PUT, PATCH, profile
opt-outs, over HTTP or NATS), resolve ("effective"), and keep template chains.

A change is validated against the whole resulting set (rules included), then
committed in PostgreSQL with its version check, audit row and change-feed row,
and only then applied to memory and answered.
"""

from __future__ import annotations

import time

import asyncpg
import msgspec

from policy import devices, suggestions, wire
from policy.decide import current_consent, split_consent_key
from policy.prefs import USER_CHANNELS, ordered
from policy.suggestions import ChannelUse
from policy.types import UserState
from policy.validate import (
    Consent,
    ConsentRecord,
    PreferencesDoc,
    PreferencesPatch,
    always_on,
    apply_patch,
    consent_status_of,
    doc_errors,
    patch_errors,
    rule_errors,
)
from stores import prefs as prefs_store
from stores.prefs import Change


class PrefCommand(msgspec.Struct, kw_only=True):
    """One preference change for the owning shard."""

    user_id: str
    put: PreferencesDoc | None = None
    patch: PreferencesPatch | None = None
    if_match: int | None = None
    source: str = "http"
    actor: str | None = None
    source_id: str | None = None  # e.g. the JetStream message: a redelivered change is applied once


class PrefResult(msgspec.Struct, kw_only=True):
    """``status``: ok | conflict (``version`` is the current one) | invalid (``errors``)."""

    user_id: str
    status: str
    version: int = 0
    errors: list[tuple[str, str]] = []
    change: Change | None = None


def doc_of(state: UserState | None, user_id: str) -> dict:
    """A user's preference document as the API shows it."""
    if state is None:
        return {"user_id": user_id, "version": 0, "preferences": [], "consent": {}, "timezone": "UTC",
                "template": None}
    return {"user_id": user_id, "version": state.version, "preferences": msgspec.to_builtins(list(state.prefs)),
            "consent": {k: "granted" for k, s in sorted(current_consent(state, time.time()).items()) if s == "granted"},
            "timezone": state.timezone,
            "template": state.template}


class PrefsMixin:
    """Mixed into UserShard (needs ``pool``, ``users``, ``policy``, ``_writing``,
    ``_ready``, ``_load_missing``). The shard's cache is bounded: each operation
    uses the states ``_load_missing`` returns, never the cache alone."""

    async def get_prefs(self, user_id: str) -> bytes:
        await self._ready()
        async with self.pool.acquire() as conn:
            state = (await self._load_missing(conn, [user_id])).get(user_id)
        return wire.encode(doc_of(state, user_id))

    async def effective(self, user_id: str, context: dict | None = None) -> bytes:
        """Every (channel, category) resolved, with the level each value came from."""
        await self._ready()
        async with self.pool.acquire() as conn:
            state = (await self._load_missing(conn, [user_id])).get(user_id)
        rows = state.prefs if state else ()
        chain = state.templates if state else ()
        cats = set(self.policy.categories) or {"*"}
        cats |= {p.category for p in rows} | {p.category for _, t in chain for p in t}
        now = self.clock()
        out = []
        for ch in USER_CHANNELS:
            for cat in sorted(cats):
                r = self.policy.resolve(rows, chain, ch, cat, "*", context or {}, now)
                out.append({"channel": ch, "category": cat, "enabled": r.enabled, "frequency": r.frequency,
                            "quiet_hours": msgspec.to_builtins(r.quiet_hours),
                            "time_windows": msgspec.to_builtins(r.time_windows), "custom": r.custom,
                            "why": r.source})
        return wire.encode({"user_id": user_id, "version": state.version if state else 0,
                            "timezone": state.timezone if state else "UTC", "effective": out})

    async def suggest(self, user_id: str, payload: bytes, lookback_days: int) -> bytes:
        """Preference suggestions for a user from their channel use (``list[ChannelUse]``,
        MessagePack, read by the caller), resolved against their preferences now
        (``policy.suggestions``): ``[the preferences' version, list[Suggestion]]``."""
        await self._ready()
        async with self.pool.acquire() as conn:
            state = (await self._load_missing(conn, [user_id])).get(user_id)
        rows = list(state.prefs) if state else []
        chain = state.templates if state else ()
        now = self.clock()
        uses = wire.decode(payload, list[ChannelUse])
        policy = self.policy
        granted = frozenset(c for c, v in (current_consent(state, now) if state else {}).items()
                            if consent_status_of(v) == "granted")
        has_push = state is not None and devices.reachable(state, "push", now) and "push" not in state.suppressed

        def push_reaches(cat: str) -> bool:  # as decide would let a normal push through
            return (has_push and policy.channel_blocked("push", "normal", cat) is None
                    and not (policy.needs_consent("push", cat) and "push" not in granted)
                    and always_on(policy, ordered(rows), chain, "push", cat, now))

        live = [r for r in rows if r.expires_at is None or r.expires_at > now]  # an expired row is not theirs now
        found = suggestions.suggest(uses, lambda ch, cat: policy.resolve(rows, chain, ch, cat, "*", {}, now),
                                    lookback_days, live, policy.can_opt_out, push_reaches)
        # only what accepting would not refuse: the same checks as a PATCH of it
        ok = [s for s in found if not patch_errors(PreferencesPatch(set=s.set), policy)
              and not rule_errors(apply_patch(rows, PreferencesPatch(set=s.set)), chain, policy, now, "set", granted)]
        return wire.encode([state.version if state else 0, ok])

    async def set_prefs(self, payload: bytes) -> bytes:
        """Apply a batch of PrefCommands, each on its own (one user's conflict or
        violation does not stop another's change). Returns list[PrefResult]."""
        await self._ready()
        commands = wire.decode(payload, list[PrefCommand])
        results = []
        users = [c.user_id for c in commands]
        asks: list = []  # double opt-in texts, sent once the writes are committed and unlocked
        async with self._writing.hold(users), self.pool.acquire() as conn:
            known = await self._load_missing(conn, users)
            for cmd in commands:
                results.append(await self._apply(conn, cmd, known, asks))
        for state, keys, version in asks:  # outside the locks: a slow SMS provider holds up no write
            await self._ask_confirmation(state, keys, version)
        return wire.encode(results)

    async def _apply(self, conn, cmd: PrefCommand, known, asks: list, retried: bool = False) -> PrefResult:
        """``known``: the states loaded for the batch (the cache is bounded: a user
        may have been evicted since; under their write locks none was written)."""
        uid = cmd.user_id
        if cmd.source_id is not None:
            seen = await conn.fetchval("SELECT version FROM preference_sync_log WHERE source_id = $1", cmd.source_id)
            if seen is not None:
                return PrefResult(user_id=uid, status="ok", version=seen)
        state = known.get(uid)
        current = state.version if state else 0
        if cmd.if_match is not None and cmd.if_match != current:
            return PrefResult(user_id=uid, status="conflict", version=current)
        rows = list(state.prefs) if state else []
        consent = current_consent(state, self.clock()) if state else {}
        tz = state.timezone if state else "UTC"
        template = state.template if state else None
        if cmd.put is not None:
            doc, kind, errors = cmd.put, "put", doc_errors(cmd.put, self.policy)
            new_rows, changed_consent = list(doc.preferences), _consent_delta(consent, doc.consent, replace=True)
        else:
            doc, kind, errors = cmd.patch, "patch", patch_errors(cmd.patch, self.policy)
            new_rows, changed_consent = apply_patch(rows, doc), _consent_delta(consent, doc.consent, replace=False)
        pending = self._awaiting_confirmation(consent, changed_consent, cmd.source)
        if doc.template is not None:
            template = doc.template or None
        chain = await self._chain(conn, template)
        if template and not chain:
            errors.append(("template", f"no template {template!r}"))
        if not errors and cmd.source != "sms_reply":  # a STOP is never refused for what it leaves switched on
            granted = frozenset(c for c, v in {**consent, **changed_consent}.items()
                                if consent_status_of(v) == "granted")
            errors = rule_errors(new_rows, chain, self.policy, self.clock(),
                                 "preferences" if kind == "put" else "set", granted)
        if errors:
            return PrefResult(user_id=uid, status="invalid", version=current, errors=errors)
        change = Change(user_id=uid, version=current, type=kind, source=cmd.source, preferences=new_rows,
                        consent={**{c: s for c, s in consent.items() if s == "granted"},
                                 **{c: consent_status_of(v) for c, v in changed_consent.items()}},
                        timezone=doc.timezone or tz, template=template, actor=cmd.actor)
        old = doc_of(state, uid) if state else None
        try:
            async with conn.transaction():
                fresh = await prefs_store.write_change(conn, self.ring, change, current, old, changed_consent, cmd.source_id)
        except asyncpg.DataError as e:  # a value PostgreSQL cannot store: the writer's error, not ours
            return PrefResult(user_id=uid, status="invalid", version=current, errors=[("$", f"not storable: {e}")])
        if fresh is None:  # another writer (a bulk import) got there first: take its state
            await self._reload(conn, [uid])
            theirs = self.users.get(uid)  # taken now: the cache may evict it during the next await
            if cmd.if_match is None and not retried:  # no version asked for: apply on top of it
                return await self._apply(conn, cmd, {uid: theirs} if theirs else {}, asks, retried=True)
            return PrefResult(user_id=uid, status="conflict", version=theirs.version if theirs else 0)
        fresh.templates = chain
        self.users[uid] = fresh
        if pending:
            asks.append((fresh, pending, change.version))
        return PrefResult(user_id=uid, status="ok", version=change.version, change=change)

    def _awaiting_confirmation(self, current: dict[str, str], changed: dict, source: str) -> list[str]:
        """Grants that a double opt-in rule holds back: written ``pending`` (in
        ``changed``) until the person confirms (``source`` ``sms_reply``: this is
        the confirmation). Returns their keys."""
        held = []
        for key, value in list(changed.items()):
            channel, purpose = split_consent_key(key)
            if (consent_status_of(value) == "granted" and source != "sms_reply" and current.get(key) != "granted"
                    and self.policy.double_opt_in(channel, purpose)):
                changed[key] = "pending" if isinstance(value, str) else msgspec.structs.replace(value, status="pending")
                if current.get(key) != "pending":  # asked already: a repeated grant does not text again
                    held.append(key)
        return held

    async def _chain(self, conn, template_id: str | None) -> tuple:
        if not template_id:
            return ()
        chain = self.template_cache.get(template_id)
        if chain is None:
            generation = self.template_generation
            chain = await prefs_store.template_chain(conn, template_id)
            if generation == self.template_generation:  # no save happened while it was read
                self.template_cache[template_id] = chain
        return chain

    async def _attach_templates(self, conn, states) -> None:
        for s in states:
            if s.template:
                s.templates = await self._chain(conn, s.template)

    async def templates_changed(self) -> int:
        """A template was saved: re-read the chain of every template a cached user
        follows (states take their chain from this cache when read)."""
        await self._ready()
        self.template_generation += 1  # a chain read before this must not be cached after it
        followed = set(self.template_cache) | self.users.template_ids()
        async with self.pool.acquire() as conn:
            fresh = {tid: await prefs_store.template_chain(conn, tid) for tid in followed}
        self.template_cache.update(fresh)
        return len(fresh)


def _consent_delta(current: dict[str, str], given: dict[str, Consent], replace: bool) -> dict[str, Consent]:
    """Consent records to write: what ``given`` changes (a whole record always:
    its details are new evidence), and for a PUT, withdrawal of every granted
    key it leaves out (a pending one is not shown by GET, so a document read and
    put back must not withdraw it)."""
    delta = {k: v for k, v in given.items() if isinstance(v, ConsentRecord) or current.get(k) != v}
    if replace:
        delta.update({k: "withdrawn" for k, s in current.items() if s == "granted" and k not in given})
    return delta



__all__ = ["PrefCommand", "PrefResult", "PrefsMixin", "doc_of", "ordered"]
