"""The webhooks' replay guard, shared by every HTTP process through Redis.

Each signed webhook names itself once (Mailgun's token, Vonage's nonce,
MessageBird's ``jti``, SNS's ``MessageId``). A copy that comes again within
the signature's window is refused (or, for SNS, answered as already done) —
whichever HTTP process it reaches: the name is claimed in Redis with ``SET NX``
for twice the window (timestamps may be that far either side). The process
keeps its own memory too (``TokenMemory``), which answers a copy to the same
process without a round trip and stands alone when Redis cannot be reached
(counted in ``tidings_replay_guard_local_total``); then a copy sent to another
process gets in, as before Redis held it.

A request that is not processed forgets its name in both places, so the
provider's retry with the same name is let in.
"""

from __future__ import annotations

import hashlib
import logging

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from providers.tracking.mailgun import TokenMemory

log = logging.getLogger("tidings.http")
LOCAL_ONLY = Counter("tidings_replay_guard_local", "Webhook names checked by this process alone: Redis was "
                     "unreachable", ["kind"])


class SharedTokens:
    """``remember``/``forget`` over this process's memory and Redis."""

    def __init__(self, kind: str, redis: Redis | None, window_s: float, max_tokens: int = 100_000):
        self.kind = kind
        self.redis = redis
        self.ttl_s = max(1, int(2 * window_s) + 1)
        self.local = TokenMemory(max_tokens=max_tokens, window_s=window_s)

    def _key(self, token: str) -> str:
        # hashed: a provider's name may be long or odd, a key should be neither
        return f"tidings:seen:{self.kind}:{hashlib.sha256(token.encode('utf-8', 'replace')).hexdigest()}"

    async def remember(self, token: str) -> bool:
        """Claim ``token``; False when this process or another saw it within the window."""
        if not self.local.remember(token):
            return False
        if self.redis is None:
            return True
        try:
            claimed = await self.redis.set(self._key(token), b"1", nx=True, ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            LOCAL_ONLY.labels(self.kind).inc()
            log.warning("replay guard: Redis unreachable (%s); this process's memory only", type(exc).__name__)
            return True
        if not claimed:
            # another process holds it: not ours to remember (it may yet be forgotten there)
            self.local.forget(token)
            return False
        return True

    async def forget(self, token: str) -> None:
        self.local.forget(token)
        if self.redis is None:
            return
        try:
            await self.redis.delete(self._key(token))
        except (RedisError, OSError) as exc:
            # the name stays claimed until its window ends: the provider's retry is refused
            # as a replay meanwhile, never applied twice
            log.warning("replay guard: a name could not be released (%s)", type(exc).__name__)


__all__ = ["SharedTokens"]
