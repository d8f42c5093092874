"""The dead-letter stream: what the Ingestor writes there, and reading and
replaying it (``tidings dlq``).

A dead letter is the original payload with headers saying why (reason, error),
where it came from (subject) and its sequence in the work stream. A replay
publishes the payload again on its original subject with ``Tidings-Replay-Of``
naming that sequence: the Ingestor derives the notification id from it as it
did the first time, so a notification the engine got partly through is not
sent twice on the channels it did record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from infra import streams
from infra.config import NatsConfig

REASON = "Tidings-Reason"
ERROR = "Tidings-Error"
SUBJECT = "Tidings-Subject"
STREAM_SEQ = "Tidings-Stream-Seq"
REPLAY_OF = "Tidings-Replay-Of"  # on a replayed message: the work-stream sequence its id derives from
STREAM_NOT_FOUND = 10059  # JetStream's error code; 10037 is "no message found"


class DeadLetter(msgspec.Struct):
    seq: int  # in the dead-letter stream
    at: datetime
    reason: str
    error: str
    subject: str  # where it was first published
    origin_seq: int  # its sequence in the work stream
    data: bytes


def headers(cfg: NatsConfig, subject: str, seq: int, origin: int, reason: str, error: str) -> dict[str, str]:
    """The headers of a dead letter of work-stream message ``seq`` whose id
    derives from ``origin`` (itself, or what it replays: a replay dead-lettered
    again keeps the first id). Its Nats-Msg-Id makes dead-lettering the same
    message twice one copy."""
    return {"Nats-Msg-Id": f"dlq:{cfg.stream}:{seq}", REASON: reason, ERROR: error, SUBJECT: subject,
            STREAM_SEQ: str(origin)}


def origin_seq(msg_headers: dict | None, seq: int) -> int:
    """The work-stream sequence a message's derived id comes from: its own, or
    for a replay, the one it replays (a well-formed ``Tidings-Replay-Of``)."""
    given = (msg_headers or {}).get(REPLAY_OF, "")
    # ASCII digits: "²".isdigit() is true and int() refuses it (a producer may send any header)
    if not (given.isascii() and given.isdigit() and 0 < len(given) <= 19):
        return seq
    # a replay comes after what it replays: a later sequence named by a producer would
    # claim the id of a message not yet published
    return int(given) if 0 < int(given) < seq else seq


def _letter(raw) -> DeadLetter:
    h = raw.headers or {}
    seq_text = h.get(STREAM_SEQ, "")
    origin = int(seq_text) if seq_text.isascii() and seq_text.isdigit() else 0
    return DeadLetter(seq=raw.seq, at=raw.time, reason=h.get(REASON, ""), error=h.get(ERROR, ""),
                      subject=h.get(SUBJECT, ""), origin_seq=origin, data=raw.data or b"")


class NoDeadLetterStream(LookupError):
    """The dead-letter stream does not exist (the engine never started with this configuration)."""


def _missing_stream(e: NotFoundError) -> bool:
    return getattr(e, "err_code", None) == STREAM_NOT_FOUND


async def scan(js: JetStreamContext, cfg: NatsConfig, reason: str | None = None,
               after: int = 0) -> AsyncIterator[DeadLetter]:
    """The dead letters after sequence ``after``, oldest first (``reason``: only
    those), up to the last one there was when the scan began: letters that
    arrive meanwhile (a replay dead-lettered again) wait for the next scan."""
    name = streams.dlq_stream(cfg)
    try:
        last = (await js.stream_info(name)).state.last_seq
    except NotFoundError as e:
        raise NoDeadLetterStream(f"no dead-letter stream {name}") from e
    seq = after + 1
    while seq <= last:
        try:  # by subject: next=True without one stops at the first gap (a deleted letter)
            raw = await js.get_msg(name, seq, next=True, subject=streams.dlq_subject(cfg))
        except NotFoundError as e:
            if _missing_stream(e):
                raise NoDeadLetterStream(f"no dead-letter stream {name}") from e
            return
        if raw.seq > last:
            return
        seq = raw.seq + 1
        letter = _letter(raw)
        if reason is None or letter.reason == reason:
            yield letter


async def get(js: JetStreamContext, cfg: NatsConfig, seq: int) -> DeadLetter | None:
    try:
        return _letter(await js.get_msg(streams.dlq_stream(cfg), seq))
    except NotFoundError as e:
        if _missing_stream(e):
            raise NoDeadLetterStream(f"no dead-letter stream {streams.dlq_stream(cfg)}") from e
        return None


def replayable(cfg: NatsConfig, letter: DeadLetter) -> str | None:
    """Why ``letter`` cannot be replayed, or None: it must name a subject of
    this engine's work stream and a sequence."""
    if not streams.category_of(cfg, letter.subject):
        return f"its subject {letter.subject!r} is not one of this engine's"
    if letter.origin_seq <= 0:
        return "it carries no work-stream sequence"
    return None


async def republish(js: JetStreamContext, cfg: NatsConfig, letter: DeadLetter) -> int:
    """Publish ``letter`` again on its subject; returns its new sequence.
    Republishing the same dead letter within the duplicate window is one message."""
    # the letter's time too: a dead-letter stream made again reuses sequences
    at = int(letter.at.timestamp() * 1e6) if letter.at else 0
    ack = await js.publish(letter.subject, letter.data, headers={
        "Nats-Msg-Id": f"replay:{streams.dlq_stream(cfg)}:{letter.seq}:{at}", REPLAY_OF: str(letter.origin_seq)})
    return ack.seq
