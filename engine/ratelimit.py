"""The HTTP API's rate limits: GCRA (the generic cell rate algorithm) per API key
and per end-user token, evaluated atomically in Redis by one Lua script so every
HTTP process shares one limit, with a per-process in-memory fallback.

GCRA keeps one number per client, the theoretical arrival time (TAT): a request
at ``now`` is allowed when ``max(TAT, now) + T - burst*T <= now`` (``T = 1/rate``),
and then moves the TAT on by ``T``. So at most ``burst + rate*t`` requests pass in
any window of ``t`` seconds, and a client idle for ``burst/rate`` seconds is back to
its full burst; the Redis key expires then. ``gcra`` is the pure step; ``LUA`` is
the same arithmetic, in the same order, against Redis's clock.

Times are whole microseconds and ``T`` is rounded up to one (``cells``): integer
arithmetic, exact in Lua's doubles up to 2^53 µs (year 2255; the configured rate
and burst are bounded so that the burst's span stays far below that too). Floats in seconds
since the epoch lost about 0.2 µs per step, so a burst asked for at one instant
at a high rate could come out one short. Rounding ``T`` up makes the limit at most
the configured one (5,000/s stays 5,000/s; 3/s becomes 2.999997/s).

Redis keys: ``tidings:rl2:<class>:<sha256(ident)[:32]>``, never a raw identifier.

The checks one HTTP process makes in the same turn of its event loop go to Redis as
one pipeline (``_Batches``): one connection taken from the pool, one write, one read.
A call per check spent about a third of the HTTP process's CPU at 1,000 requests/s
(bench/RESULTS.md, "Rate-limit checks in one pipeline per loop turn"). Each check
is still its own script call, so the verdicts are those of one call per check."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from infra.config import RateLimitConfig

log = logging.getLogger(__name__)

FALLBACKS = Counter("tidings_ratelimit_fallback", "Rate-limit checks Redis could not answer, by the mode applied",
                    ["mode"])

CLASSES = ("key", "user")
# "rl2": the TAT in µs; "rl" held seconds, and a process of either version reading the
# other's value would refuse for ~1.8e15 s or grant a fresh burst during a rolling update
KEY_PREFIX = "tidings:rl2:"
EPSILON = 1e-9  # ceil() of a whole number of seconds that float division left just above it
US = 1_000_000  # the arithmetic's unit: microseconds

# KEYS[1]: the client's key. ARGV: the interval and the burst's span in µs (``cells``),
# and (tests only) the time in µs; without it Redis's own clock, so the HTTP processes'
# clocks never matter. Returns {allowed 0/1, remaining, reset_us, retry_after_us}.
LUA = """
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local now
if ARGV[3] then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - tau
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
local remaining = math.floor((now + tau - new_tat) / interval)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, remaining, new_tat - now, 0}
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int  # the burst
    remaining: int  # requests allowed right now after this one
    reset_s: float  # until the full burst is available again
    retry_after_s: float  # 0 when allowed


class LimiterUnavailable(Exception):
    """Redis could not be reached and ``redis_down = "closed"``: answer 503."""


def cells(rate: float, burst: float) -> tuple[int, int]:
    """(interval, span of the burst) in whole µs: the interval rounded up, never
    below 1 µs; the span a whole number of intervals for a whole burst."""
    interval = max(1, math.ceil(US / rate))
    return interval, math.floor(interval * burst)


def gcra(tat: int | None, now: float, rate: float, burst: float) -> tuple[Verdict, int | None]:
    """One request at ``now`` (seconds) against a client whose theoretical
    arrival time is ``tat`` (µs; None: unknown, a full burst). Returns the verdict
    and the TAT to keep (unchanged when denied)."""
    interval, tau = cells(rate, burst)
    now_us = round(now * US)
    start = now_us if tat is None or tat < now_us else tat
    new_tat = start + interval
    allow_at = new_tat - tau
    limit = int(burst)
    if now_us < allow_at:
        return Verdict(False, limit, 0, (start - now_us) / US, (allow_at - now_us) / US), tat
    remaining = (now_us + tau - new_tat) // interval
    return Verdict(True, limit, max(0, remaining), (new_tat - now_us) / US, 0.0), new_tat


def redis_key(cls: str, ident: str) -> str:
    return f"{KEY_PREFIX}{cls}:{hashlib.sha256(ident.encode()).hexdigest()[:32]}"


class Limiter:
    """``check(cls, ident)`` for ``cls`` "key" (per API key) or "user" (per
    end-user token). ``redis`` None: the in-memory limiter only (one process).
    ``clock`` is the in-memory limiter's (monotonic seconds)."""

    SWEEP_EVERY = 1000  # in-memory checks between sweeps of clients back at full burst

    def __init__(self, redis: Redis | None, cfg: RateLimitConfig, clock: Callable[[], float] = time.monotonic):
        self.redis = redis
        self.cfg = cfg
        self.clock = clock
        self.rates = {"key": (cfg.key_per_s, cfg.key_burst), "user": (cfg.user_per_s, cfg.user_burst)}
        self.script = redis.register_script(LUA) if redis is not None else None
        self.batches = _Batches(redis, self.script, cfg.timeout_s) if redis is not None else None
        self.local: dict[str, int] = {}  # key -> TAT (µs), the fallback's state
        self._checks = 0

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    async def check(self, cls: str, ident: str) -> Verdict:
        """Counts one request; raises ``LimiterUnavailable`` when Redis is down and
        ``redis_down = "closed"``, ``ValueError`` for an unknown class."""
        if cls not in self.rates:
            raise ValueError(f"rate-limit class {cls!r}: expected one of {CLASSES}")
        rate, burst = self.rates[cls]
        key = redis_key(cls, ident)
        if self.batches is None:
            return self._local(key, rate, burst)
        try:
            allowed, remaining, reset_us, retry_us = await self.batches.check(key, cells(rate, burst))
        except (RedisError, OSError, TimeoutError):
            return self._redis_down(key, rate, burst)
        return Verdict(bool(allowed), int(burst), int(remaining), int(reset_us) / US, int(retry_us) / US)

    def _redis_down(self, key: str, rate: float, burst: float) -> Verdict:
        mode = self.cfg.redis_down
        FALLBACKS.labels(mode).inc()
        if mode == "closed":
            raise LimiterUnavailable("rate limits unavailable: Redis cannot be reached")
        if mode == "open":
            return Verdict(True, int(burst), int(burst), 0.0, 0.0)
        return self._local(key, rate, burst)

    def _local(self, key: str, rate: float, burst: float) -> Verdict:
        now = self.clock()
        self._checks += 1
        if self._checks % self.SWEEP_EVERY == 0:
            now_us = round(now * US)
            self.local = {k: t for k, t in self.local.items() if t > now_us}
        verdict, tat = gcra(self.local.get(key), now, rate, burst)
        if tat is not None:
            self.local[key] = tat
        return verdict


# a batch of script calls: (Redis key, (interval, burst span) in µs, the caller's answer)
_Calls = list[tuple[str, tuple[int, int], asyncio.Future]]


class _Batches:
    """The script calls asked for in one turn of the event loop, sent as one
    pipeline when the loop next gets to its ready callbacks. Every call of a batch
    that fails (Redis down, ``timeout_s`` passed) raises that failure as a
    ``RedisError``, so each caller falls back (``redis_down``); a pipeline that is
    slow does not hold the next batch, which goes on its own connection."""

    def __init__(self, redis: Redis, script, timeout_s: float) -> None:
        self.redis, self.script, self.timeout_s = redis, script, timeout_s
        self.pending: _Calls = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sending: set[asyncio.Task] = set()
        self.rounds = 0  # pipelines sent (tests: the checks of one turn share one)

    def check(self, key: str, args: tuple[int, int]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # a Limiter that outlived its loop (tests): what was pending there is gone
            self.loop, self.pending = loop, []
        if not self.pending:
            loop.call_soon(self._flush)
        answer = loop.create_future()
        self.pending.append((key, args, answer))
        return answer

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)
        # whatever ends the task (cancelled before it ran, an error of ours), no caller waits forever
        task.add_done_callback(lambda _, b=batch: _fail(b, RedisError("rate-limit check not answered")))

    async def _send(self, batch: _Calls) -> None:
        self.rounds += 1
        try:
            answers = await asyncio.wait_for(self._run(batch), self.timeout_s)
        except (RedisError, OSError, TimeoutError) as e:
            _fail(batch, e)
            return
        except Exception as e:
            log.exception("rate-limit checks failed")
            _fail(batch, RedisError(f"rate-limit checks failed: {type(e).__name__}"))
            return
        for (*_, answer), got in zip(batch, answers, strict=True):
            if answer.done():  # its request went away meanwhile
                continue
            if isinstance(got, Exception):
                answer.set_exception(got)
            else:
                answer.set_result(got)

    async def _run(self, batch: _Calls) -> list:
        answers = await self._pipeline(batch)
        # a Redis restarted or flushed: the script loaded once, and only the calls that
        # found it missing made again (the others counted their request already; a
        # SCRIPT FLUSH can land between two commands of one pipeline)
        lost = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
        if lost:
            self.script.sha = await self.redis.script_load(self.script.script)
            for i, a in zip(lost, await self._pipeline([batch[i] for i in lost]), strict=True):
                answers[i] = a
        return answers

    async def _pipeline(self, batch: _Calls) -> list:
        # evalsha straight on the pipeline: a Script added to it would cost a SCRIPT EXISTS per batch
        pipe = self.redis.pipeline(transaction=False)
        for key, (interval, tau), _ in batch:
            pipe.evalsha(self.script.sha, 1, key, interval, tau)
        return await pipe.execute(raise_on_error=False)


def _fail(batch: _Calls, error: BaseException) -> None:
    for *_, answer in batch:
        if not answer.done():
            answer.set_exception(error)


def headers(v: Verdict) -> dict[str, str]:
    """RateLimit-Limit / -Remaining / -Reset (delta seconds, draft-ietf-httpapi-ratelimit-headers)
    and, on a denial, Retry-After (whole seconds, at least 1)."""
    out = {"RateLimit-Limit": str(v.limit), "RateLimit-Remaining": str(v.remaining),
           "RateLimit-Reset": str(math.ceil(v.reset_s - EPSILON) if v.reset_s > 0 else 0)}
    if not v.allowed:
        out["Retry-After"] = str(max(1, math.ceil(v.retry_after_s - EPSILON)))
    return out


WHO = {"key": "this API key", "user": "this user token"}


def _error(status: int, error: str, reason: str, extra: dict[str, str]) -> web.Response:
    return web.json_response({"error": error, "errors": [{"field": "$", "reason": reason}]}, status=status,
                             headers=extra)


# (class, identity) of the caller to limit, set by the authorization middleware
RATE_KEY = web.RequestKey("rate_key", tuple)


def rate_limit_middleware(limiter: Limiter):
    """An aiohttp middleware limiting requests by ``request[RATE_KEY]``, a
    (class, ident) tuple the authentication middleware (before this one) sets;
    a request without one is not limited. Denied: 429 with the headers; allowed:
    the answer (an ``HTTPException`` too) gets the RateLimit-* headers."""

    @web.middleware
    async def rate_limit(request: web.Request, handler):
        rate_key = request.get(RATE_KEY)
        if rate_key is None or not limiter.enabled:
            return await handler(request)
        cls, ident = rate_key
        try:
            verdict = await limiter.check(cls, ident)
        except LimiterUnavailable as e:
            return _error(503, "rate limits unavailable", str(e), {"Retry-After": "1"})
        extra = headers(verdict)
        if not verdict.allowed:
            return _error(429, "rate limited", f"too many requests for {WHO.get(cls, cls)}; "
                                               f"retry after {extra['Retry-After']} s", extra)
        try:
            response = await handler(request)
        except web.HTTPException as e:
            e.headers.update(extra)
            raise
        if not response.prepared:  # a stream or WebSocket already sent its headers
            response.headers.update(extra)
        return response

    return rate_limit
