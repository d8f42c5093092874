"""In-app: an inbox in PostgreSQL, realtime over NATS to the WebSocket of
``engine.http.inbox``: ``providers.inapp.provider.InAppProvider``."""

from providers.inapp.provider import InAppProvider

__all__ = ["InAppProvider"]
