"""Send-time optimization: ``"deliver": "optimal"`` with a ``deliver_by``.

A request that allows it is sent to each recipient in the hour of the day, in their
own zone, when they have opened and clicked most, chosen no later than ``deliver_by``
(and before the request's time to live runs out), outside their quiet hours and inside
their allowed time windows and the send-window rules. Until then it is held
(``Defer``, reason ``timing.optimized``) as a request to send now: released, it is
decided again like any other (preferences, quiet hours, caps), never optimized again,
so it cannot be held for its timing twice.

The person's engagement is 24 counts, one per local hour, of their opens and clicks
in the last ``lookback_days`` (``Profile``; the UserShard reads them from
``engagement_events``). New people and people with few events are smoothed toward
the population's curve: the score of an hour is ``(count + weight × prior) /
(total + weight)``, so with no events the prior decides and with many the person's
own hours do. ``prior`` is configured (``[preferences.timing]``), by default a curve
of the usual reading times (morning, lunch, evening).

Pure: the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from msgspec import Meta, Struct

from policy.windows import Window, next_allowed, period_bounds, quiet_until

REASON = "timing.optimized"
HOURS = 24
# How often people read, by local hour (relative): low at night, peaks at 8, 12 and 19-21.
DEFAULT_PRIOR: tuple[float, ...] = (1, 1, 1, 1, 1, 2, 4, 7, 9, 8, 7, 7, 9, 8, 7, 6, 6, 7, 8, 9, 9, 8, 5, 2)
# A person's profile: opens and clicks per local hour (0-23), one byte each (scaled down
# together when an hour passes 255: only their proportions matter). 24 bytes a person
Profile = bytes
EMPTY: Profile = bytes(HOURS)


class TimingConfig(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    prior: Annotated[tuple[Annotated[float, Meta(ge=0, le=1e6)], ...], Meta(min_length=24, max_length=24)] = DEFAULT_PRIOR
    # events the prior counts as: with 20, one open at 03:30 does not outweigh the evening
    # (an hour needs about two more events than the prior's best), a habit of a few does
    prior_weight: Annotated[float, Meta(ge=0, le=1e6)] = 20.0
    lookback_days: Annotated[int, Meta(ge=1, le=365)] = 90
    refresh_s: Annotated[float, Meta(ge=60, le=7 * 86_400)] = 6 * 3600.0  # a profile is read again after this

    def __post_init__(self) -> None:
        if sum(self.prior) <= 0:
            raise ValueError("preferences.timing.prior: at least one hour must weigh more than 0")


def profile_of(event_times: Sequence[float], tz: ZoneInfo) -> Profile:
    """A person's profile from their events' instants (seconds since the epoch)."""
    if not event_times:
        return EMPTY
    counts = [0] * HOURS
    for t in event_times:
        counts[datetime.fromtimestamp(t, tz).hour] += 1
    top = max(counts)
    if top > 255:
        counts = [round(n * 255 / top) for n in counts]
    return bytes(counts)


def add_event(profile: Profile, at: float, tz: ZoneInfo) -> Profile:
    """``profile`` with one more event at ``at``'s local hour (all scaled down by half
    when that hour is full: only proportions matter)."""
    counts = bytearray(profile)
    hour = datetime.fromtimestamp(at, tz).hour
    if counts[hour] == 255:
        counts = bytearray(n // 2 for n in counts)
    counts[hour] += 1
    return bytes(counts)


def scores(profile: Profile, cfg: TimingConfig) -> list[float]:
    """How likely the person is to engage in each local hour, smoothed toward the prior."""
    total_prior = sum(cfg.prior)
    w = cfg.prior_weight
    total = sum(profile)
    if total + w <= 0:
        return [p / total_prior for p in cfg.prior]
    return [(n + w * p / total_prior) / (total + w) for n, p in zip(profile, cfg.prior, strict=True)]


# (profile, zone, this hour's start, horizon in minutes, quiet hours, allowed windows, prior)
# → the chosen hour's start, or None for this hour: a broadcast's recipients mostly share
# all of it (no events yet, one zone)
_chosen: dict[tuple, float | None] = {}


def best_time(profile: Profile, cfg: TimingConfig, tz: ZoneInfo, now: float, latest: float,
              quiet: Sequence[Window] = (), allowed: Sequence[Sequence[Window]] = ()) -> float:
    """When to send: ``now`` if this hour is the person's best before ``latest``, else
    the start of the first local hour that scores highest, outside ``quiet`` hours and
    inside each of ``allowed`` (the person's time windows, send-window rules). Only the
    next 24 hours are looked at (a best hour comes back daily). Ties go to the
    earliest; with no candidate hour open, ``now`` (the windows then hold it as they
    would anyway)."""
    if latest <= now:
        return now
    this_hour, next_hour = period_bounds("hourly", tz, now)
    horizon = min(latest, now + 86_400.0)
    quiet, allowed = tuple(quiet), tuple(tuple(w) for w in allowed if w)
    key = (profile, tz.key, this_hour, int(horizon // 60), quiet, allowed, cfg.prior, cfg.prior_weight)
    if key in _chosen:
        chosen = _chosen[key]
        return now if chosen is None or chosen <= now else chosen
    by_hour = scores(profile, cfg)
    best_at: float | None = None
    best = -1.0
    t = now
    while t <= horizon:
        if (not quiet or quiet_until(quiet, tz, t) is None) and all(next_allowed(w, tz, t) is None for w in allowed):
            s = by_hour[datetime.fromtimestamp(t, tz).hour]
            if s > best:
                best_at, best = (None if t == now else t), s
        t = next_hour if t == now else period_bounds("hourly", tz, t)[1]  # the next local hour's start
    if len(_chosen) >= 20_000:
        _chosen.clear()
    _chosen[key] = best_at
    return now if best_at is None else best_at
