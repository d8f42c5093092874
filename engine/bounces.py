"""The bounce listener: an SMTP server (aiosmtpd, on the engine's event loop) for the
delivery reports (DSN, RFC 3464) and feedback-loop complaints (ARF, RFC 5965) that
come back about the mail the SMTP providers sent.

``[bounces] listen = "host:port"`` turns it on; the ``bounce_domain`` of each
SMTP provider (with its ``bounce_secret``) must have its MX here. Who may talk
to it: anyone, as to any MX, but a report counts only if it names a
notification by a token whose MAC the provider's secret made
(``providers.email.verp``): in the recipient (``bounce+<token>@...``, where
DSNs go) or in the quoted original's Message-ID (what complaints quote).

- RCPT: only local parts at a configured bounce domain (550 5.1.1 otherwise:
  this is no relay and no mailbox);
- DATA: not a report (an auto-reply, say): 250, dropped; a report naming no
  notification of ours: 550 5.7.1; otherwise its events are applied as the
  tracking webhooks' are (``engine.http.tracking.apply_events``) and answered
  250; a failure to apply: 451 4.3.0, so the reporting MTA tries again.

An address is suppressed (hard bounce, complaint) only when the report's block
for that recipient names it and it is an email address of the notification's
own user: a report can never suppress another person's address. A report that
names none (complaints are often redacted) moves the tracking row only.

Bounds, since the listener shares the HTTP API's process and event loop: at
most ``max_connections`` sessions (421 beyond), each at most ``session_s`` long
and ``COMMAND_LIMIT`` commands of a kind; a message over ``max_bytes`` is
refused (552), one with more than ``MAX_PARTS`` MIME boundaries is not read;
reports are parsed one at a time in a thread, not on the loop; an apply, once
started, finishes even if the client goes away (its reload of the suppressed
users with it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import msgspec
from aiosmtpd.smtp import SMTP

from engine.http import tracking
from infra.config import bounces_listen
from providers.email import verp
from providers.tracking import mailreport
from stores import users as user_store

log = logging.getLogger("tidings.bounces")
FIND_USER = "SELECT user_id FROM delivery_tracking WHERE notification_id = $1 AND channel = ANY($2::text[]) LIMIT 1"
MAX_RECIPIENTS = 10
MAX_PARTS = 200  # MIME boundaries in one report: a real one has three or four
COMMAND_LIMIT = 100  # each SMTP command per session (NOOP forever is refused)


@dataclass(frozen=True)
class Mailboxes:
    domains: frozenset[str]
    secrets: list[bytes]
    channels: list[str]


def mailboxes(engine) -> Mailboxes:
    """The bounce domains and secrets of the SMTP providers (enabled or not:
    reports about past sends still come), and the channels they serve."""
    domains, secrets, channels = set(), [], []
    for channel, ch in engine.cfg.channels.items():
        for p in ch.providers:
            if p.type != "smtp":
                continue
            s = tracking.resolved(p.settings, engine.secrets)
            if isinstance(s.get("bounce_domain"), str) and isinstance(s.get("bounce_secret"), str):
                domains.add(s["bounce_domain"].lower())
                secrets.append(s["bounce_secret"].encode())
                if channel not in channels:
                    channels.append(channel)
    return Mailboxes(frozenset(domains), secrets, channels)


class BounceHandler:
    """aiosmtpd's handler hooks; see the module docstring."""

    def __init__(self, engine):
        self.engine = engine
        self.boxes = mailboxes(engine)
        self.counts = {"applied": 0, "not_reports": 0, "unmatched": 0, "failed": 0, "refused": 0}
        self._parsing = asyncio.Semaphore(1)
        self._applying: set[asyncio.Task] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if verp.domain_of(address) not in self.boxes.domains:
            return "550 5.1.1 no such mailbox here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or b""
        if raw.count(b"\n--") > MAX_PARTS:
            self.counts["refused"] += 1
            return "554 5.6.0 too many parts for a report"
        try:
            async with self._parsing:
                found = await asyncio.to_thread(self._read, raw, list(envelope.rcpt_tos))
        except Exception:  # noqa: BLE001 - what the email package chokes on is no report we can read
            found = None
        if found is None:
            self.counts["not_reports"] += 1
            return "250 2.6.0 accepted; not a delivery report or complaint"
        report, nid = found
        if nid is None:
            self.counts["unmatched"] += 1
            return "550 5.7.1 the report names no message of ours"
        # once begun, the apply (commit, then the shards' reload) ends even if the client leaves
        task = asyncio.ensure_future(self._apply(report, nid))
        self._applying.add(task)
        task.add_done_callback(self._applying.discard)
        return await asyncio.shield(task)

    async def handle_exception(self, error: Exception) -> str:
        log.warning("bounces: a session failed: %s", type(error).__name__)
        return "451 4.3.0 try again later"

    def _read(self, raw: bytes, rcpt_tos: list[str]) -> tuple[mailreport.Report, str | None] | None:
        """In a thread: the report in ``raw`` and the notification it names."""
        report = mailreport.parse(raw, "smtp", time.time())
        if report is None:
            return None
        return report, verp.notification_of([*rcpt_tos, *report.token_texts], self.boxes.secrets)

    async def _apply(self, report: mailreport.Report, nid: str) -> str:
        try:
            owned = await self._own_addresses(nid, report.addresses)
            events = [msgspec.structs.replace(ev, notification_id=nid, address=addr)
                      for ev, addr in zip(report.events, owned, strict=True)]
            done = await tracking.apply_events(self.engine, events, self.boxes.channels)
        except Exception as exc:  # noqa: BLE001 - answered 451: the reporting MTA tries again later
            self.counts["failed"] += 1
            log.warning("bounces: a %s report was not applied: %s", report.kind, type(exc).__name__)
            return "451 4.3.0 not applied; try again later"
        self.counts["applied"] += 1
        log.info("bounces: %s report applied: %d updated, %d suppressed", report.kind, done.updated, done.suppressed)
        return "250 2.0.0 applied"

    async def _own_addresses(self, nid: str, candidates: list[list[str]]) -> list[str | None]:
        """Per event, the first address its block names that belongs to the
        notification's user (None when none does)."""
        out: list[str | None] = [None] * len(candidates)
        if not any(candidates):
            return out
        engine = self.engine
        async with engine.pool.acquire() as conn:
            user = await conn.fetchval(FIND_USER, nid, self.boxes.channels)
            if user is None:
                return out
            mine: dict[str, bool] = {}
            for i, addresses in enumerate(candidates):
                for addr in addresses[:5]:
                    if addr not in mine:
                        mine[addr] = user in await user_store.users_with(conn, engine.ring, "email", addr)
                    if mine[addr]:
                        out[i] = addr
                        break
        return out

    async def drain(self) -> None:
        """Wait for the applies under way (the engine is stopping)."""
        if self._applying:
            await asyncio.gather(*self._applying, return_exceptions=True)


class Listener(SMTP):
    """aiosmtpd's session, counted: at most ``limit`` at once, each closed after
    ``lifetime_s`` whatever it does."""

    def __init__(self, handler: BounceHandler, limit: int, lifetime_s: float, sessions: set, **kwargs):
        super().__init__(handler, **kwargs)
        self._limit, self._lifetime_s, self._sessions = limit, lifetime_s, sessions
        self._deadline = None

    def connection_made(self, transport) -> None:
        if len(self._sessions) >= self._limit:
            transport.write(b"421 4.7.0 too many connections; try again later\r\n")
            transport.close()
            return
        self._sessions.add(transport)
        self._deadline = asyncio.get_running_loop().call_later(self._lifetime_s, transport.close)
        super().connection_made(transport)

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._sessions.discard(self.transport)
            super().connection_lost(exc)


class BounceServer:
    """The listening socket, its sessions and its handler."""

    def __init__(self, server: asyncio.base_events.Server, handler: BounceHandler, sessions: set):
        self.server, self.handler, self._sessions = server, handler, sessions

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, cut the open sessions, let the applies under way end."""
        self.server.close()
        for transport in list(self._sessions):
            transport.close()
        await self.handler.drain()


async def serve(engine) -> BounceServer | None:
    """Start the listener when ``bounces.listen`` is set; None otherwise."""
    cfg = engine.cfg.bounces
    if not cfg.listen:
        return None
    host, port = bounces_listen(cfg.listen)
    handler = BounceHandler(engine)
    if not handler.boxes.domains:
        log.warning("bounces: listening, but no smtp provider has bounce_domain and bounce_secret")
    # aiosmtpd logs every MAIL FROM and RCPT TO at INFO: addresses and tokens stay out of the logs
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    sessions: set = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: Listener(handler, cfg.max_connections, cfg.session_s, sessions, data_size_limit=cfg.max_bytes,
                         hostname="tidings-bounces", ident="Tidings bounces", timeout=cfg.timeout_s,
                         decode_data=False, command_call_limit=COMMAND_LIMIT),
        host, port)
    return BounceServer(server, handler, sessions)


__all__ = ["BounceHandler", "BounceServer", "serve"]
