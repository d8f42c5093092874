"""Scheduled sends: when a request asks to go (``send_at``, an instant; or
``send_at_local``, a wall-clock time in each recipient's zone). Until then each
(recipient, channel) is held like quiet hours (``Defer``, reason ``scheduled``)
and decided again when the Scheduler releases it.

``send_at_local`` is ``HH:MM`` (the first such time in the recipient's zone at
or after the request was accepted) or ``YYYY-MM-DDTHH:MM`` (that date and time
in the recipient's zone). The moment is computed from the acceptance time, not
from now, so the release that decides it again finds it due. Across a DST jump:
a time the clocks skip (02:30 on the spring-forward night) goes at the same
distance after the jump (03:30); a time that happens twice (the autumn night)
goes the first time, or the second if the request came between them.

A scheduled send's life (``ttl_s``, an ``expiry`` rule's) starts when it is due,
not when it was accepted (``start_of_life``)."""

from __future__ import annotations

import re
import zoneinfo
from datetime import date, datetime, time, timedelta

SCHEDULED = "scheduled"  # the Defer reason
LAST_YEAR = 2096  # send_at is at most 4e9 seconds since the epoch (early 2096): the same bound here
LOCAL = re.compile(r"^(?:([0-9]{4})-([0-9]{2})-([0-9]{2})T)?([0-9]{2}):([0-9]{2})\Z")  # ASCII digits only


def parse_local(value: str) -> tuple[date | None, time]:
    """``send_at_local`` → (its date or None, its time); ValueError names what is wrong."""
    m = LOCAL.match(value)
    if m is None:
        raise ValueError("expected HH:MM or YYYY-MM-DDTHH:MM (a wall-clock time in the recipient's zone)")
    y, mo, d, h, mi = m.groups()
    if int(h) > 23 or int(mi) > 59:
        raise ValueError("not a time of day (00:00 to 23:59)")
    try:
        day = date(int(y), int(mo), int(d)) if y else None
    except ValueError:
        raise ValueError("not a date") from None
    if day is not None and not 2000 <= day.year < LAST_YEAR:
        raise ValueError(f"a year from 2000 to {LAST_YEAR - 1}")
    return day, time(int(h), int(mi))


def local_instant(day: date, at: time, tz: zoneinfo.ZoneInfo, fold: int = 0) -> float:
    """The instant the clocks in ``tz`` show ``day`` ``at`` (fold 0: the first of a
    repeated time, 1 the second; a skipped time comes out after the jump, by the
    zone's offset before it)."""
    return datetime.combine(day, at, tzinfo=tz).replace(fold=fold).timestamp()


def due_at(send_at: float | None, send_at_local: str | None, tz: zoneinfo.ZoneInfo, accepted: float) -> float | None:
    """When a request accepted at ``accepted`` may go, for a recipient in ``tz``;
    None: at once (not scheduled)."""
    if send_at is not None:
        return send_at
    if send_at_local is None:
        return None
    day, at = parse_local(send_at_local)
    if day is not None:
        return local_instant(day, at, tz)
    today = datetime.fromtimestamp(accepted, tz).date()
    for fold in (0, 1):  # a time the autumn night repeats: its second showing, if the first has passed
        due = local_instant(today, at, tz, fold)
        if due >= accepted:
            return due
    return local_instant(today + timedelta(days=1), at, tz)


def start_of_life(send_at: float | None, send_at_local: str | None, tz: zoneinfo.ZoneInfo, accepted: float) -> float:
    """Where a request's time to live starts: when it was accepted, or, scheduled,
    when it became due (a push scheduled for next week is not stale on arrival)."""
    due = due_at(send_at, send_at_local, tz, accepted)
    return max(accepted, due) if due is not None else accepted


def errors(send_at: float | None, send_at_local: str | None, at: str = "$") -> list[tuple[str, str]]:
    """What is wrong with a request's schedule, as (path, reason)."""
    if send_at is not None and send_at_local is not None:
        return [(f"{at}.send_at_local", "give send_at or send_at_local, not both")]
    if send_at_local is not None:
        try:
            parse_local(send_at_local)
        except ValueError as e:
            return [(f"{at}.send_at_local", str(e))]
    return []
