"""A Python client of the Tidings HTTP API, async (``Client``) and sync (``SyncClient``).

    async with Client("http://127.0.0.1:8080", api_key="tk_...") as tidings:
        [accepted] = await tidings.send(NotificationRequest(user_id="u1", category="orders",
                                                            channels=["email"], content=Content(...)))
        status = await tidings.notification(accepted.id)

Requests are the engine's own msgspec Structs (``policy.types``) or plain dicts;
answers are Structs below where the API's shape is fixed, dicts elsewhere.

- **Idempotent by default.** A notification or broadcast sent without ``id`` or
  ``idempotency_key`` gets a fresh idempotency key, so a retry after a lost answer
  is the same notification (the engine derives the id from the calling key and
  the idempotency key) — never a second send.
- **Retries** on a connection error, a timeout, 429, 502, 503 and 504 for reads, cancellations and
  the idempotent sends; ``Retry-After`` is honoured (up to ``max_wait_s``), otherwise
  the wait doubles from ``backoff_s`` with jitter, for at most ``max_retry_s`` in all
  (inside JetStream's two-minute duplicate window). Writes (users, preferences) are
  retried only when they cannot have arrived: the connection was refused, or the rate
  limiter answered 429 — a retried write that had arrived would commit a second
  version, or undo someone else's change in between.
- **Errors** are ``TidingsError`` (the API's ``{"error", "errors": [{"field",
  "reason"}]}``, its ``str`` one line) and ``Unreachable`` for an engine that
  cannot be reached.
- **Pages**: ``inbox``, ``event_subscriptions`` and ``dead_letters`` yield items
  across pages (the API's cursors).
- **Status events**: ``subscribe`` a URL (the secret is in its answer, once),
  change, delete, read its dead letters and replay them.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import msgspec

from policy.api import Accepted, BroadcastStatus, Cancellation, ChannelCancel, ChannelOutcome, NotificationStatus
from policy.types import BroadcastRequest, NotificationRequest

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
Retry = bool | str  # True: every retry above; "unsent": only what cannot have arrived; False: none


def _quote(segment: str) -> str:
    """A path segment: a user id may hold ``/``, ``?`` or ``#``."""
    return urllib.parse.quote(str(segment), safe="")


class TidingsError(Exception):
    """The engine answered an error. ``status`` is the HTTP status, ``error`` its
    short text, ``fields`` the ``{"field", "reason"}`` list."""

    def __init__(self, status: int, error: str, fields: list[dict] | None = None):
        self.status, self.error, self.fields = status, error, fields or []
        super().__init__(str(self))

    def __str__(self) -> str:
        detail = "; ".join(f"{f.get('field', '$')}: {f.get('reason', '')}" for f in self.fields[:5])
        more = f" (+{len(self.fields) - 5} more)" if len(self.fields) > 5 else ""
        return " ".join(f"{self.status} {self.error}{': ' + detail + more if detail else ''}".split())


class Unreachable(TidingsError):
    """No answer from the engine (refused, reset, timed out) after the retries. After
    a timeout the request may have been applied all the same."""

    def __init__(self, url: str, cause: BaseException):
        self.url, self.cause = url, cause
        super().__init__(0, "unreachable")

    def __str__(self) -> str:
        if isinstance(self.cause, asyncio.TimeoutError):
            return f"no answer from the engine at {self.url} in time (the request may have been applied)"
        text = " ".join(f"{type(self.cause).__name__}: {self.cause}".split()).rstrip(": ")
        return f"cannot reach the engine at {self.url}: {text}"


def _with_key(n: NotificationRequest | BroadcastRequest | Mapping) -> Any:
    """``n`` with an idempotency key unless it has an id or a key already."""
    if isinstance(n, (NotificationRequest, BroadcastRequest)):
        if n.id is None and n.idempotency_key is None:
            return msgspec.structs.replace(n, idempotency_key=str(uuid.uuid4()))
        return n
    n = dict(n)
    if n.get("id") is None and n.get("idempotency_key") is None:
        n["idempotency_key"] = str(uuid.uuid4())
    return n


class Client:
    """The async client; see the module docstring. ``api_key`` (or an end-user
    ``token``) goes in ``Authorization: Bearer``; ``headers`` are added as given."""

    def __init__(self, url: str, api_key: str | None = None, *, token: str | None = None,
                 headers: Mapping[str, str] | None = None, timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.2, max_wait_s: float = 30.0, max_retry_s: float = 60.0,
                 session: aiohttp.ClientSession | None = None):
        self.url = url.rstrip("/")
        self._headers = dict(headers or {})
        credential = api_key or token
        if credential:
            self._headers["Authorization"] = f"Bearer {credential}"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries, self.backoff_s, self.max_wait_s, self.max_retry_s = retries, backoff_s, max_wait_s, max_retry_s
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    # -- the routes -------------------------------------------------------------

    async def send(self, *notifications: NotificationRequest | Mapping) -> list[Accepted]:
        """Submit notifications (one request, up to the engine's ``http.max_batch``)."""
        body = [_with_key(n) for n in notifications]
        answer = await self.request("POST", "/v1/notifications", json=body, retry=True)
        return msgspec.convert(answer["notifications"], list[Accepted])

    async def broadcast(self, request: BroadcastRequest | Mapping) -> Accepted:
        answer = await self.request("POST", "/v1/broadcasts", json=_with_key(request), retry=True)
        return msgspec.convert(answer, Accepted)

    async def notification(self, notification_id: str) -> NotificationStatus:
        """Each channel's outcome (404 while nothing is recorded yet)."""
        return msgspec.convert(await self.request("GET", f"/v1/notifications/{_quote(notification_id)}"), NotificationStatus)

    async def broadcast_status(self, broadcast_id: str) -> BroadcastStatus:
        return msgspec.convert(await self.request("GET", f"/v1/broadcasts/{_quote(broadcast_id)}"), BroadcastStatus)

    async def cancel(self, notification_id: str | None = None, *, idempotency_key: str | None = None
                     ) -> Cancellation:
        """Cancel the channels of a notification still held, by its id or by the
        idempotency key this caller sent it with (one of them). ``TidingsError``
        404: nothing recorded under it; 409: nothing was left to cancel.
        Retried like a read: a repeated cancellation answers as the first."""
        if (notification_id is None) == (idempotency_key is None):
            raise ValueError("give a notification id or an idempotency key")
        if notification_id is not None:
            answer = await self.request("DELETE", f"/v1/notifications/{_quote(notification_id)}", retry=True)
        else:
            answer = await self.request("DELETE", "/v1/notifications", params={"idempotency_key": idempotency_key},
                                        retry=True)
        return msgspec.convert(answer, Cancellation)

    async def user(self, user_id: str) -> dict:
        return await self.request("GET", f"/v1/users/{_quote(user_id)}")

    async def put_user(self, user_id: str, profile: Mapping) -> dict:
        return await self.request("PUT", f"/v1/users/{_quote(user_id)}", json=profile, retry="unsent")

    async def preferences(self, user_id: str) -> dict:
        return await self.request("GET", f"/v1/users/{_quote(user_id)}/preferences")

    async def change_preferences(self, user_id: str, change: Mapping, *, replace: bool = False,
                                 if_match: str | None = None) -> dict:
        """PATCH (or PUT with ``replace``) the user's preferences; ``if_match`` the
        version read before, for a change that must not overwrite another."""
        headers = {"If-Match": if_match} if if_match is not None else None
        return await self.request("PUT" if replace else "PATCH", f"/v1/users/{_quote(user_id)}/preferences", json=change,
                                  headers=headers, retry="unsent")

    async def inbox(self, user_id: str, *, unread: bool = False, page_size: int = 50,
                    after: int = 0) -> AsyncIterator[dict]:
        """Every inbox message after ``after``, oldest first, a page at a time."""
        while True:
            page = await self.request("GET", f"/v1/users/{_quote(user_id)}/inbox",
                                      params={"after": after, "limit": page_size, "unread": str(unread).lower()})
            for message in page["messages"]:
                yield message
            if not page["messages"] or page["next"] == after:
                return
            after = page["next"]

    # -- status events: webhook subscriptions ----------------------------------------

    async def subscribe(self, url: str, *, channels: Sequence[str] = (), statuses: Sequence[str] = (),
                        categories: Sequence[str] = (), description: str = "", enabled: bool = True,
                        secret: str | None = None) -> dict:
        """Subscribe ``url`` to status events (empty filters take everything):
        the subscription with its signing ``secret``, shown this once."""
        body = {"url": url, "channels": list(channels), "statuses": list(statuses), "categories": list(categories),
                "description": description, "enabled": enabled, **({"secret": secret} if secret else {})}
        return await self.request("POST", "/v1/event-subscriptions", json=body, retry="unsent")

    async def event_subscriptions(self, *, page_size: int = 100) -> AsyncIterator[dict]:
        """Every subscription, in id order, a page at a time."""
        after: str | None = None
        while True:
            page = await self.request("GET", "/v1/event-subscriptions",
                                      params={"limit": page_size, **({"after": after} if after else {})})
            for sub in page["subscriptions"]:
                yield sub
            if (after := page["next"]) is None:
                return

    async def change_subscription(self, subscription_id: str, change: Mapping) -> dict:
        """Change its ``url``, ``description``, filters or ``enabled``."""
        return await self.request("PATCH", f"/v1/event-subscriptions/{_quote(subscription_id)}", json=change,
                                  retry="unsent")

    async def delete_subscription(self, subscription_id: str) -> None:
        await self.request("DELETE", f"/v1/event-subscriptions/{_quote(subscription_id)}", retry="unsent")

    async def dead_letters(self, subscription_id: str, *, page_size: int = 100) -> AsyncIterator[dict]:
        """The events the subscription's URL never took, newest first, a page at a time."""
        before: str | None = None
        while True:
            page = await self.request("GET", f"/v1/event-subscriptions/{_quote(subscription_id)}/dead-letters",
                                      params={"limit": page_size, **({"before": before} if before else {})})
            for letter in page["dead_letters"]:
                yield letter
            if (before := page["next_before"]) is None:
                return

    async def replay_dead_letters(self, subscription_id: str) -> int:
        """Deliver the oldest 1,000 dead letters again (in the background): how many were taken."""
        answer = await self.request("POST", f"/v1/event-subscriptions/{_quote(subscription_id)}/dead-letters/replay")
        return int(answer["taken"])

    # -- the transport -------------------------------------------------------------

    async def request(self, method: str, path: str, *, json: Any = None, params: Mapping | None = None,
                      headers: Mapping[str, str] | None = None, retry: Retry | None = None) -> Any:
        """The decoded JSON answer of a 2xx; ``TidingsError`` otherwise. ``retry``
        (default: reads only) allows the retries of the module docstring."""
        retry = method in ("GET", "HEAD") if retry is None else retry
        body = msgspec.json.encode(json) if json is not None else None
        sent_headers = {**self._headers, **(headers or {}),
                        **({"Content-Type": "application/json"} if body is not None else {})}
        attempt, deadline = 0, time.monotonic() + self.max_retry_s
        while True:
            try:
                async with self._http().request(method, self.url + path, data=body, params=params,
                                                headers=sent_headers, timeout=self.timeout,
                                                allow_redirects=False) as r:
                    raw = await r.read()
                    if r.status < 300:
                        try:
                            return msgspec.json.decode(raw) if raw else None
                        except msgspec.DecodeError:
                            raise TidingsError(r.status, "the answer is not JSON") from None
                    again = r.status == 429 if retry == "unsent" else (retry and r.status in RETRY_STATUSES)
                    wait = self._wait(attempt, r.headers.get("Retry-After"))
                    if again and attempt < self.retries and time.monotonic() + wait < deadline:
                        await asyncio.sleep(wait)
                        attempt += 1
                        continue
                    raise _error(r.status, raw)
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                # a refused connection sent nothing; anything later may have arrived
                unsent = isinstance(exc, aiohttp.ClientConnectorError)
                again = unsent if retry == "unsent" else bool(retry)
                wait = self._wait(attempt, None)
                if not again or attempt >= self.retries or time.monotonic() + wait >= deadline:
                    raise Unreachable(self.url, exc) from None
                await asyncio.sleep(wait)
                attempt += 1

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = math.nan  # an HTTP date: not sent by the engine; the backoff instead
            if math.isfinite(seconds):
                return min(max(seconds, 0.0), self.max_wait_s)
        return min(self.backoff_s * 2 ** attempt * (0.5 + random.random()), self.max_wait_s)


def _error(status: int, raw: bytes) -> TidingsError:
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        errors = doc.get("errors")
        fields = [f for f in errors if isinstance(f, dict)] if isinstance(errors, list) else []
        return TidingsError(status, doc["error"], fields)
    text = raw[:200].decode("utf-8", "replace").strip().splitlines()
    return TidingsError(status, text[0] if text else "error")


class SyncClient:
    """``Client`` for code without an event loop: the same methods, blocking. Not
    for use inside a running loop (use ``Client`` there)."""

    def __init__(self, url: str, api_key: str | None = None, **kwargs):
        self._client = Client(url, api_key, **kwargs)
        self._loop = asyncio.new_event_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.close())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def send(self, *notifications) -> list[Accepted]:
        return self._run(self._client.send(*notifications))

    def broadcast(self, request) -> Accepted:
        return self._run(self._client.broadcast(request))

    def notification(self, notification_id: str) -> NotificationStatus:
        return self._run(self._client.notification(notification_id))

    def broadcast_status(self, broadcast_id: str) -> BroadcastStatus:
        return self._run(self._client.broadcast_status(broadcast_id))

    def cancel(self, notification_id: str | None = None, *, idempotency_key: str | None = None) -> Cancellation:
        return self._run(self._client.cancel(notification_id, idempotency_key=idempotency_key))

    def user(self, user_id: str) -> dict:
        return self._run(self._client.user(user_id))

    def put_user(self, user_id: str, profile: Mapping) -> dict:
        return self._run(self._client.put_user(user_id, profile))

    def preferences(self, user_id: str) -> dict:
        return self._run(self._client.preferences(user_id))

    def change_preferences(self, user_id: str, change: Mapping, **kwargs) -> dict:
        return self._run(self._client.change_preferences(user_id, change, **kwargs))

    def inbox(self, user_id: str, **kwargs) -> Iterator[dict]:
        return self._iterate(self._client.inbox(user_id, **kwargs))

    def subscribe(self, url: str, **kwargs) -> dict:
        return self._run(self._client.subscribe(url, **kwargs))

    def event_subscriptions(self, **kwargs) -> Iterator[dict]:
        return self._iterate(self._client.event_subscriptions(**kwargs))

    def change_subscription(self, subscription_id: str, change: Mapping) -> dict:
        return self._run(self._client.change_subscription(subscription_id, change))

    def delete_subscription(self, subscription_id: str) -> None:
        self._run(self._client.delete_subscription(subscription_id))

    def dead_letters(self, subscription_id: str, **kwargs) -> Iterator[dict]:
        return self._iterate(self._client.dead_letters(subscription_id, **kwargs))

    def replay_dead_letters(self, subscription_id: str) -> int:
        return self._run(self._client.replay_dead_letters(subscription_id))

    def _iterate(self, pages) -> Iterator[dict]:
        while True:
            try:
                yield self._run(pages.__anext__())
            except StopAsyncIteration:
                return

    def request(self, method: str, path: str, **kwargs) -> Any:
        return self._run(self._client.request(method, path, **kwargs))


__all__ = ["Accepted", "BroadcastStatus", "Cancellation", "ChannelCancel", "ChannelOutcome", "Client", "NotificationStatus", "SyncClient", "TidingsError",
           "Unreachable"]
