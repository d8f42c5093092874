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

An address is suppressed (hard bounce, complaint) only when the report names
it and it is an email address of the notification's own user: a report can
never suppress an address its sender was not sent mail at. A report that names
none (complaints are often redacted) moves the tracking row only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import msgspec
from aiosmtpd.smtp import SMTP

from engine.http import tracking
from infra.config import ConfigError
from providers.email import verp
from providers.tracking import mailreport
from stores import users as user_store

log = logging.getLogger("tidings.bounces")
FIND_USER = "SELECT user_id FROM delivery_tracking WHERE notification_id = $1 AND channel = ANY($2::text[]) LIMIT 1"
MAX_RECIPIENTS = 10


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


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not host or not 0 <= number <= 65535:
        raise ConfigError(f"config: bounces.listen = {text!r} is not host:port")
    return host.strip("[]"), number


class BounceHandler:
    """aiosmtpd's handler hooks; see the module docstring."""

    def __init__(self, engine):
        self.engine = engine
        self.boxes = mailboxes(engine)
        self.counts = {"applied": 0, "not_reports": 0, "unmatched": 0, "failed": 0}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if verp.domain_of(address) not in self.boxes.domains:
            return "550 5.1.1 no such mailbox here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or b""
        try:
            report = mailreport.parse(raw, "smtp", time.time())
        except Exception:  # noqa: BLE001 - whatever the email package chokes on is not a report we can read
            report = None
        if report is None:
            self.counts["not_reports"] += 1
            return "250 2.6.0 accepted; not a delivery report or complaint"
        nid = verp.notification_of([*envelope.rcpt_tos, *report.token_texts], self.boxes.secrets)
        if nid is None:
            self.counts["unmatched"] += 1
            return "550 5.7.1 the report names no message of ours"
        try:
            address = await self._own_address(nid, report.addresses)
            events = [msgspec.structs.replace(ev, notification_id=nid, address=address) for ev in report.events]
            done = await tracking.apply_events(self.engine, events, self.boxes.channels)
        except Exception as exc:  # noqa: BLE001 - answered 451: the reporting MTA tries again later
            self.counts["failed"] += 1
            log.warning("bounces: a %s report was not applied: %s", report.kind, type(exc).__name__)
            return "451 4.3.0 not applied; try again later"
        self.counts["applied"] += 1
        log.info("bounces: %s report applied: %d updated, %d suppressed", report.kind, done["updated"],
                 done["suppressed"])
        return "250 2.0.0 applied"

    async def _own_address(self, nid: str, addresses: list[str]) -> str | None:
        """The first of ``addresses`` that belongs to the notification's user."""
        if not addresses:
            return None
        engine = self.engine
        async with engine.pool.acquire() as conn:
            user = await conn.fetchval(FIND_USER, nid, self.boxes.channels)
            if user is None:
                return None
            for addr in addresses[:mailreport.MAX_RECIPIENTS]:
                if user in await user_store.users_with(conn, engine.ring, "email", addr):
                    return addr
        return None


async def serve(engine) -> asyncio.base_events.Server | None:
    """Start the listener when ``bounces.listen`` is set; None otherwise."""
    cfg = engine.cfg.bounces
    if not cfg.listen:
        return None
    host, port = listen_address(cfg.listen)
    handler = BounceHandler(engine)
    if not handler.boxes.domains:
        log.warning("bounces: listening, but no smtp provider has bounce_domain and bounce_secret")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=cfg.max_bytes, hostname="tidings-bounces", ident="Tidings bounces",
                     timeout=cfg.timeout_s, decode_data=False),
        host, port)
    server.handler = handler  # type: ignore[attr-defined]  # for tests and status
    return server


def bound_port(server) -> int:
    return server.sockets[0].getsockname()[1]


__all__ = ["BounceHandler", "bound_port", "serve"]
