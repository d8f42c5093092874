"""A provider account's rate limit and daily quota for the whole deployment,
counted in Redis by every ChannelShard of every engine instance, so a configured
``rate_per_s`` and ``daily_limit`` mean the provider's total (docs/design.md,
"Provider limits for the whole deployment").

The rate is GCRA (engine/ratelimit.py explains it) over the account's calls and
the quota a counter per UTC day, both in one Lua script on Redis's clock. A
shard leases tokens for the calls waiting on it at once (one Redis round trip
for a batch's calls, not one per call); a leased token unused within
``LEASE_S`` is dropped, never carried (a carried token would be a burst past the
shared rate later).

When Redis cannot answer (an error, or slower than ``timeout_s``) the shard
applies its share locally for ``retry_s``: the rate, burst and daily quota
divided by ``share`` (the channel's ChannelShards in this instance). Those
admissions are counted (``fallbacks``: tidings_provider_limit_fallback_total)
and added to Redis's day once it answers again.

Redis keys: ``tidings:pl:<sha256(scope, channel, provider)[:32]>`` (the rate's
theoretical arrival time) and ``…:day:<days since the epoch>`` (kept two days).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from typing import Any

import msgspec

from actors.delivery.bucket import Clock, Sleep, TokenBucket

log = logging.getLogger(__name__)

LEASE_S = 0.5  # a leased token not used by then is dropped
MIN_WAIT_S = 0.0005  # the shortest sleep before asking again (float rounding can say 0)
DAY_S = 86_400
DAY_KEPT_S = 2 * DAY_S
_EPS = 1e-9
KEY_PREFIX = "tidings:pl:"

# KEYS[1]: the rate's TAT; KEYS[2]: today's count. ARGV: rate per second (0: no rate),
# burst, tokens wanted, daily limit (0: none), pause in seconds (a provider's
# Retry-After, 0: none), sends counted locally while Redis was away (added to the
# day), and (tests only) the time; without it Redis's clock. Returns {granted,
# wait_s, used today}: wait_s is "-1" when today's quota is spent, else the seconds
# until the next token when fewer than wanted were granted. Floats as strings
# (Redis truncates Lua numbers to integers). ``lease`` below is the same arithmetic.
# Redis's clock counts from 2023-11-14 (1.7e9 s), not 1970: doubles then keep
# nanoseconds, not a quarter of a microsecond, and 0.3 s of burst stays 3 tokens at 10/s.
LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local pause = tonumber(ARGV[5])
local spent = tonumber(ARGV[6])
local now
if ARGV[7] and ARGV[7] ~= '' then
  now = tonumber(ARGV[7])
else
  local t = redis.call('TIME')
  now = (tonumber(t[1]) - 1700000000) + tonumber(t[2]) / 1000000
end
local used = 0
if limit > 0 then
  if spent > 0 then
    redis.call('INCRBY', KEYS[2], spent)
    redis.call('EXPIRE', KEYS[2], 172800)
  end
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= limit then
    return {0, '-1', used}
  end
  if want > limit - used then
    want = limit - used
  end
end
local granted = want
local wait = 0
if rate > 0 then
  local interval = 1 / rate
  local tau = interval * burst
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then
    tat = now
  end
  if pause > 0 and tat < now + pause + tau - interval then
    tat = now + pause + tau - interval
  end
  local avail = math.floor((now + tau - tat) / interval + 1e-6)
  if avail < 0 then
    avail = 0
  end
  if granted > avail then
    granted = avail
  end
  tat = tat + granted * interval
  if granted < want then
    wait = tat + interval - tau - now
  end
  redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
if limit > 0 and granted > 0 then
  redis.call('INCRBY', KEYS[2], granted)
  redis.call('EXPIRE', KEYS[2], 172800)
  used = used + granted
end
return {granted, string.format('%.6f', wait), used}
"""


def lease(tat: float, used: int, now: float, rate: float, burst: float, want: int, limit: int,
          pause_s: float = 0.0, spent: int = 0) -> tuple[int, float, float, int]:
    """The Lua script's step in Python: (granted, wait_s, new tat, used today).
    ``tat`` 0 and ``used`` 0 for an account never seen."""
    if limit > 0:
        used += spent
        if used >= limit:
            return 0, -1.0, tat, used
        want = min(want, limit - used)
    granted, wait = want, 0.0
    if rate > 0:
        interval = 1 / rate
        tau = interval * burst
        tat = max(tat, now)
        if pause_s > 0:
            tat = max(tat, now + pause_s + tau - interval)
        avail = max(0, math.floor((now + tau - tat) / interval + 1e-6))
        granted = min(granted, avail)
        tat += granted * interval
        if granted < want:
            wait = tat + interval - tau - now
    if limit > 0:
        used += granted
    return granted, wait, tat, used


def redis_key(scope: str, channel: str, provider: str) -> str:
    """The account's key: hashed, so free-text names never reach Redis's key space as they are."""
    return KEY_PREFIX + hashlib.sha256(f"{scope}\0{channel}\0{provider}".encode()).hexdigest()[:32]


def share_of_rate(rate: float, burst: float, share: int, clock: Clock = time.monotonic) -> TokenBucket:
    """One shard's share of an account's rate: the rate divided among ``share``
    shards, the burst too but at least one token (below one a bucket never gives
    one). A shard with no Redis applies it, and one whose Redis is away."""
    share = max(1, share)
    return TokenBucket(rate / share, max(1.0, burst / share), clock)


class SharedSetup(msgspec.Struct, frozen=True):
    """What a ChannelShard needs to share its providers' limits (engine/runtime.py
    makes it). ``redis_url`` empty: no Redis, each shard applies its share alone."""

    redis_url: str = ""
    scope: str = ""  # the deployment: database schema and stream (one engine's keys, not another's)
    share: int = 1  # the channel's ChannelShards in this instance: the fallback divides by it
    timeout_s: float = 0.2
    retry_s: float = 5.0


class SharedLimits:
    """One provider account's limits as one shard sees them. It is both the slot's
    ``bucket`` (``acquire``, ``pause_until``, ``drain_waits``) and its ``daily``
    (``exhausted``, ``take``): the quota is counted with each token, in the same
    Redis step, so ``take`` has nothing left to count."""

    def __init__(self, redis: Any, key: str, rate: float, burst: float, daily_limit: int, share: int,
                 timeout_s: float = 0.2, retry_s: float = 5.0, clock: Clock = time.monotonic,
                 wall: Clock = time.time) -> None:
        self.key, self.rate, self.limit = key, float(rate), int(daily_limit)
        # below one token GCRA never gives one (a rate under 1/s with no burst set)
        self.burst = max(1.0, float(burst))
        self.timeout_s, self.retry_s = timeout_s, retry_s
        self.clock, self.wall = clock, wall
        self.script = redis.register_script(LUA)
        self.share = max(1, share)
        self.local = share_of_rate(self.rate, self.burst, self.share, clock)  # the fallback
        self.leased = 0
        self.leased_until = -math.inf
        self.demand = 0  # acquires waiting now: what the next lease asks for
        self._call: asyncio.Future | None = None
        self._pause_at = -math.inf  # a provider's Retry-After (monotonic end) not yet sent to Redis
        self._hold_until = -math.inf  # no token before this (monotonic), whatever was leased
        self._down_until = -math.inf  # Redis failed: the local share applies until then (-inf: it answers)
        self._used: tuple[int, int] = (-1, 0)  # (UTC day, sends counted in it) as Redis last said
        self._local_left: tuple[int, int] = (-1, 0)  # (UTC day, sends the local share may still make)
        self._spent_locally = 0  # admitted by the fallback, not yet added to Redis's day
        self.waits: list[float] = []
        self.refused = 0
        self.fallbacks = 0  # admissions by the local share since the start (health)
        self._fallbacks_drained = 0  # of them, those ``drain_fallbacks`` has handed out

    def _today(self) -> int:
        return int(self.wall() // DAY_S)

    # -- the bucket's side ---------------------------------------------------------

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def drain_waits(self) -> tuple[list[float], int]:
        waits, refused = self.waits, self.refused
        self.waits, self.refused = [], 0
        return waits, refused

    def drain_fallbacks(self) -> int:
        """The admissions by the local share since the last call."""
        n, self._fallbacks_drained = self.fallbacks - self._fallbacks_drained, self.fallbacks
        return n

    @property
    def redis_down(self) -> bool:
        return self.clock() < self._down_until

    def info(self) -> dict:
        return {"shared": True, "redis_down": self.redis_down, "fallbacks": self.fallbacks}

    async def acquire(self, sleep: Sleep, max_wait_s: float) -> bool:
        """One token, within ``max_wait_s``: False as soon as it would take longer,
        or when today's quota is spent (``exhausted`` then says so). While Redis is
        away a waiter takes from the local share, one token at a time, and goes back
        to Redis as soon as the outage's ``retry_s`` is over."""
        started = self.clock()
        deadline = started + max(0.0, max_wait_s)
        waited = False
        self.demand += 1
        try:
            while True:
                now = self.clock()
                if now >= self._hold_until and self._take_leased(now):
                    break
                if now < self._down_until:
                    wait = self._take_locally()
                    if wait == 0.0:
                        break
                    if wait < 0:
                        return False
                    wait = min(wait, max(self._down_until - now, MIN_WAIT_S))  # then Redis again
                elif now < self._hold_until and (self._pause_at <= now or self.rate <= 0):
                    # paused here, and Redis was told (an account without a rate has no
                    # shared pause: asking would only count tokens it cannot use yet)
                    wait = self._hold_until - now
                else:
                    leased = await self._lease()
                    if leased is None:  # tokens came, or Redis went away: look again
                        if self.clock() > deadline + _EPS:  # others took them all, too long
                            self.refused += 1
                            return False
                        continue
                    if leased < 0:
                        return False
                    wait = leased
                if self.clock() + wait > deadline + _EPS:
                    self.refused += 1
                    return False
                waited = True
                await sleep(wait)
        finally:
            self.demand -= 1
        if waited:
            self.waits.append(self.clock() - started)
        return True

    def _take_leased(self, now: float) -> bool:
        if now >= self.leased_until:
            self.leased = 0
        if self.leased > 0:
            self.leased -= 1
            return True
        return False

    def _take_locally(self) -> float:
        """A token of the local share: 0.0 taken, > 0 the seconds until one, -1 the
        day's share is spent."""
        if self.limit > 0 and self._local_left_today() <= 0:
            return -1.0
        wait = self.local.try_take()
        if wait > 0.0:
            return wait
        if self.limit > 0:
            day, left = self._local_left
            self._local_left = (day, left - 1)
        self._spent_locally += 1
        self.fallbacks += 1
        return 0.0

    def _local_left_today(self) -> int:
        """What the local share may still send today: its share of what Redis last
        said was left (nothing if Redis said the day was spent); a new day, its
        share of the whole quota."""
        today = self._today()
        day, left = self._local_left
        if day != today:
            used_day, used = self._used
            left = max(0, self.limit - (used if used_day == today else 0)) // self.share
            self._local_left = (today, left)
        return self._local_left[1]

    async def _lease(self) -> float | None:
        """One Redis step shared by every acquire waiting now (shielded: one
        waiter giving up does not cancel it for the others)."""
        if self._call is None:
            self._call = asyncio.ensure_future(self._ask_redis())
        return await asyncio.shield(self._call)

    async def _ask_redis(self) -> float | None:
        try:
            want = max(1, self.demand - self.leased)
            if self.rate > 0:
                want = min(want, max(1, int(self.burst)))
            pause, self._pause_at = self._pause_at - self.clock(), -math.inf
            spent, self._spent_locally = self._spent_locally, 0
            day = self._today()
            keys = [self.key, f"{self.key}:day:{day}"]
            args = [repr(self.rate), repr(self.burst), want, self.limit, repr(max(0.0, pause)), spent]
            try:
                async with asyncio.timeout(self.timeout_s):
                    answer = await self.script(keys=keys, args=args)
                granted, wait, used = int(answer[0]), float(answer[1]), int(answer[2])
            except Exception as e:  # noqa: BLE001 - any failure (down, slow, an answer not ours) is "down"
                # a step that timed out may have run: its ``spent`` is sent again
                # (counted twice, never lost: the safe side)
                self._spent_locally += spent
                if pause > 0:
                    self._pause_at = max(self._pause_at, self.clock() + pause)
                self._went_down(e)
                return None
            if self._down_until > -math.inf:
                log.info("provider limits: Redis answers again; %s is shared again", self.key)
                self._down_until = -math.inf
            if self.limit > 0:
                self._used = (day, used)
            if granted > 0:
                self.leased += granted
                self.leased_until = self.clock() + LEASE_S
                return None
            if wait < 0:
                return -1.0
            return max(wait, MIN_WAIT_S)
        finally:
            self._call = None

    def _went_down(self, e: BaseException) -> None:
        if self._down_until == -math.inf:  # the outage's first failure: its share of what is left today
            log.warning("provider limits: Redis did not answer (%s); this shard applies its share locally "
                        "and asks again in %.0f s", type(e).__name__, self.retry_s)
            self._local_left = (-1, 0)
        self._down_until = self.clock() + self.retry_s

    def pause_until(self, t: float) -> None:
        """A provider's Retry-After: nothing before monotonic ``t`` here at once,
        and for every shard once the next lease carries it to Redis (only for an
        account with a rate: without one, GCRA keeps no time to move)."""
        now = self.clock()
        if t <= now:
            return
        self.local.pause_until(t)
        if self.rate > 0:
            self._pause_at = max(self._pause_at, t)
        self._hold_until = max(self._hold_until, t)

    # -- the daily quota's side ---------------------------------------------------

    def exhausted(self) -> bool:
        if self.limit <= 0:
            return False
        if self.redis_down:
            return self._local_left_today() <= 0
        day, used = self._used
        return day == self._today() and used >= self.limit

    def take(self) -> bool:
        """Counted with the token (``acquire``): nothing left to count."""
        return True


__all__ = ["LUA", "SharedLimits", "SharedSetup", "lease", "redis_key", "share_of_rate"]
