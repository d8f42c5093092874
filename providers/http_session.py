"""The aiohttp session an HTTP provider keeps: one per provider, pooled
connections, and no per-request timer (the ChannelShard bounds each call)."""

from __future__ import annotations

import aiohttp

USER_AGENT = "tidings/0.1"


class HttpSession:
    """Mixin: ``start()`` opens the session (idempotent), ``close()`` releases it.
    Needs ``max_connections`` and ``timeout_s`` (connect timeout) on the instance."""

    max_connections: int
    timeout_s: float
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the shared HTTP session (idempotent)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s),
                headers={"User-Agent": USER_AGENT},
            )

    async def close(self) -> None:
        """Close the session and its pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
