"""Open WebSockets, counted in this process per user and in all
(``http.ws_per_user``, ``http.ws_total``). A socket past either is refused
before its upgrade, with ``Retry-After``: 429 when the user holds too many
(a client that leaks sockets), 503 when the process holds too many (it is the
server that is full). A socket counts from its admission until its handler
returns, however the socket ends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web

from engine.http.common import Problem
from infra.config import HttpConfig

RETRY_AFTER_S = 10  # a refused client waits this long before trying again


class Sockets:
    def __init__(self) -> None:
        self.total = 0
        self.per_user: dict[str, int] = {}

    @contextlib.contextmanager
    def held(self, user_id: str | None, cfg: HttpConfig) -> Iterator[None]:
        """Admit one socket of ``user_id`` for the ``with`` block, or raise the
        refusal. ``None``: a socket whose user is not known at its upgrade (a
        GraphQL socket authenticates in its first message), counted in the total only."""
        if user_id is None:
            if self.total >= cfg.ws_total:
                raise _full()
            self.total += 1
            try:
                yield
            finally:
                self.total -= 1
            return
        mine = self.per_user.get(user_id, 0)
        if mine >= cfg.ws_per_user:
            raise refused(429, "too many sockets", "user_id",
                          f"this user has {mine} inbox sockets open, the most allowed (http.ws_per_user)")
        if self.total >= cfg.ws_total:
            raise _full()
        self.total += 1
        self.per_user[user_id] = mine + 1
        try:
            yield
        finally:
            self.total -= 1
            left = self.per_user[user_id] - 1
            if left:
                self.per_user[user_id] = left
            else:
                del self.per_user[user_id]


def _full() -> Problem:
    return refused(503, "server busy", "$", "this server holds as many sockets as it may (http.ws_total); "
                   "try again later")


def refused(status: int, error: str, field: str, reason: str) -> Problem:
    problem = Problem(status, error, [{"field": field, "reason": reason}])
    problem.headers["Retry-After"] = str(RETRY_AFTER_S)
    return problem


SOCKETS = web.AppKey("sockets", Sockets)
