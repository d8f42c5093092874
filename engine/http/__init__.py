"""The HTTP API (aiohttp). ``app`` builds the application from the route
modules; ``common`` holds what they share."""

from engine.http.app import bound_port, make_app, serve

__all__ = ["bound_port", "make_app", "serve"]
