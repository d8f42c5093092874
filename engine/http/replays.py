"""The webhooks' replay guard, shared by every HTTP process through Redis.

Each signed webhook names itself once (Mailgun's token, Vonage's nonce,
MessageBird's ``jti``, SNS's ``MessageId``). A name goes through two states,
kept in Redis under the deployment's namespace (its schema and stream) and in
the process's memory:

- **busy** while a request with it is processed (``claim``): ``SET NX`` with a
  value only this claim knows, expiring after ``busy_s`` (a process that dies
  mid-request frees the name by then);
- **done** once that request succeeded (``done``), kept for twice the
  signature's window (timestamps may be that far either side) plus a margin.

A request that failed releases its claim (``release``), so the provider's retry
gets in. Only the claim's owner can move or release it (compare-and-set in a
Lua script): a claim that expired and was taken by another process is not
touched. A copy that finds the name busy elsewhere learns so (SNS answers it
503 and SNS tries again later); one that finds it done is a replay.

With Redis unreachable each process guards itself (``tidings_replay_guard_local_total``);
with no Redis configured (none is started when ``infra.config.wants_redis`` says so) likewise.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from typing import Literal

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from providers.tracking.mailgun import TokenMemory

log = logging.getLogger("tidings.http")
LOCAL_ONLY = Counter("tidings_replay_guard_local", "Webhook names checked by this process alone: Redis was "
                     "unreachable", ["kind"])
DONE = b"done"
MARGIN_S = 60  # clocks of the provider and of our hosts may disagree this much
# compare-and-set / compare-and-delete: only the claim that set the value may change it.
# done is also written where the busy mark is gone (it expired during a long request, or
# the SET never landed): a processed name must be a replay everywhere
FINISH = ("local v = redis.call('GET', KEYS[1]) "
          "if v == ARGV[1] or not v then return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end")
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

State = Literal["new", "busy", "done"]


class Claim:
    """This request's hold on a name; ``value`` None when Redis did not take it."""

    __slots__ = ("token", "value")

    def __init__(self, token: str, value: bytes | None):
        self.token, self.value = token, value


class SharedTokens:
    """See the module docstring."""

    def __init__(self, kind: str, redis: Redis | None, window_s: float, namespace: str = "",
                 busy_s: float = 120.0, max_tokens: int = 100_000):
        self.kind = kind
        self.redis = redis
        self.ttl_s = int(2 * window_s) + MARGIN_S
        self.busy_s = max(1, int(busy_s))
        self.namespace = namespace
        self.local = TokenMemory(max_tokens=max_tokens, window_s=window_s + MARGIN_S / 2)
        self.busy: set[str] = set()
        self._pending: set[asyncio.Task] = set()

    def _key(self, token: str) -> str:
        # hashed: a provider's name may be long or odd, a key should be neither
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        return f"tidings:seen:{self.namespace}:{self.kind}:{digest}"

    async def claim(self, token: str) -> tuple[State, Claim | None]:
        """("new", claim) when this request may process ``token``; ("busy", None)
        while another request does; ("done", None) when one did."""
        if token in self.local:
            return "done", None
        if token in self.busy:
            return "busy", None
        self.busy.add(token)  # before any await: a copy arriving meanwhile is busy, not new
        value = f"busy:{uuid.uuid4().hex}".encode()
        try:
            if self.redis is None:
                return "new", Claim(token, None)
            try:
                taken = await self.redis.set(self._key(token), value, nx=True, ex=self.busy_s)
            except (RedisError, OSError) as exc:
                # the SET may have landed all the same (a lost reply): the claim keeps its
                # value, which only it knows, so done() and release() still find it
                LOCAL_ONLY.labels(self.kind).inc()
                log.warning("replay guard: Redis unreachable (%s); this process's memory only", type(exc).__name__)
                return "new", Claim(token, value)
            if not taken:
                self.busy.discard(token)
                try:
                    current = await self.redis.get(self._key(token))
                except (RedisError, OSError):
                    return "busy", None  # held or done elsewhere, which is not known: try again later
                return ("done" if current == DONE else "busy"), None
            return "new", Claim(token, value)
        except BaseException:
            # cancelled mid-claim: nothing was processed, the name must not stay held
            self.busy.discard(token)
            self._finish_soon(RELEASE, token, value)
            raise

    async def done(self, claim: Claim) -> None:
        """The request succeeded: the name is a replay from now on."""
        self.busy.discard(claim.token)
        self.local.remember(claim.token)
        if claim.value is not None:
            await self._script(FINISH, claim.token, claim.value, DONE, self.ttl_s)

    async def release(self, claim: Claim) -> None:
        """The request failed: the provider's retry may come in."""
        self.busy.discard(claim.token)
        if claim.value is not None:
            await self._script(RELEASE, claim.token, claim.value)

    async def _script(self, script: str, token: str, *args) -> None:
        if self.redis is None:
            return
        try:
            # shielded: a request cancelled at shutdown still moves or frees its own claim
            await asyncio.shield(self.redis.eval(script, 1, self._key(token), *args))
        except (RedisError, OSError) as exc:
            # a busy claim then expires by itself after busy_s
            log.warning("replay guard: a claim could not be updated (%s)", type(exc).__name__)

    def _finish_soon(self, script: str, token: str, value: bytes) -> None:
        if self.redis is not None:
            task = asyncio.ensure_future(self._script(script, token, value))
            self._pending.add(task)  # held: a task only the loop refers to may be collected
            task.add_done_callback(self._pending.discard)


async def guarded(memory: SharedTokens, claim: Claim | None, work):
    """``work``'s answer; the claim is marked done when it succeeds and released
    when it fails (so that the provider's retry of the same request gets in)."""
    try:
        result = await work
    except BaseException:
        if claim is not None:
            await memory.release(claim)
        raise
    if claim is not None:
        await memory.done(claim)
    return result


def namespace(engine) -> str:
    """The deployment's: its database (the URL, or the embedded one's home), schema and
    stream. Two deployments on one Redis never share names, defaults or not."""
    cfg = getattr(engine, "cfg", None)
    if cfg is None:
        return ""
    where = cfg.database.url or f"embedded:{os.path.abspath(cfg.engine.home)}"
    digest = hashlib.sha256(where.encode()).hexdigest()[:12]
    return f"{digest}:{cfg.database.schema}:{cfg.nats.stream}"


__all__ = ["Claim", "SharedTokens", "guarded", "namespace"]
