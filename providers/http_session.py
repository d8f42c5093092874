"""The aiohttp session an HTTP provider keeps: one per provider, pooled
connections, and no per-request timer (the ChannelShard bounds each call)."""

from __future__ import annotations

import aiohttp

from providers.errors import ConfigurationError

USER_AGENT = "tidings/0.1"


def base_url_setting(settings: dict, default: str, kind: str, name: str) -> str:
    """``settings["base_url"]`` (``default`` when unset) without a trailing slash;
    ConfigurationError unless it is an http(s) URL."""
    base_url = str(settings.get("base_url") or default).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{kind} provider {name!r}: base_url must start with http:// or https://")
    return base_url


class HttpSession:
    """Mixin: ``start()`` opens the session (idempotent), ``session()`` returns it
    opened, ``close()`` releases it.
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

    async def session(self) -> aiohttp.ClientSession:
        """The open session (opened first when it is not, or was closed)."""
        await self.start()
        assert self._session is not None
        return self._session

    async def close(self) -> None:
        """Close the session and its pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
