"""Quiet hours, allowed hours and digest periods: wall-clock spans in a user's zone
turned into instants (epoch float seconds). Pure: the caller passes the instant.

Windows become merged [start, end) seconds-of-week (Monday 00:00 local is 0), once
per distinct windows tuple, so membership is one ``fromtimestamp`` and a bisect.
Walking to an edge (a window's end, the next start, a period's end) first assumes the
UTC offset stays as it is, then checks: where it changed, the walk stops at the
change (found by bisection) and looks again from there. DST gaps, repeated hours
and 30- or 45-minute shifts need no special case. Offsets and shifts are whole
seconds, so all walking is in whole seconds: ``t`` and ``floor(t)`` always lie in
the same window and the same period.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from msgspec import Meta, Struct

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HHMM = Annotated[str, Meta(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)\Z")]


class Window(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A daily span of wall-clock time in the user's zone. ``days`` are the days the window STARTS on."""

    start: HHMM
    end: HHMM
    days: tuple[Day, ...] = DAYS  # type: ignore[assignment]


_DAY_MIN, _WEEK_MIN, _WEEK_S = 1440, 7 * 1440, 7 * 86_400
# 1970-01-01 was a Thursday: local midnight of the epoch is 3 days into the week.
_EPOCH_SOW = 3 * 86_400
# Longest stretch walked without looking at the offset in between. tzdata's two
# closest shifts of one zone are almost 4 days apart: two never cancel out unseen.
_STEP_S = 2 * 86_400
# quiet_until / next_allowed give up (None) past this: a week plus DST slack.
_HORIZON_S = 8 * 86_400

Spans = tuple[tuple[int, ...], tuple[int, ...]]  # merged [start, end) seconds-of-week: starts, ends


def _minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def _minute_spans(w: Window) -> list[tuple[int, int]]:
    """[start, end) minutes-of-week the window covers, split at the week's end. An end
    not after the start crosses midnight; an empty window or a 24:00 start covers nothing."""
    start, end = _minutes(w.start), _minutes(w.end)
    if start == end or start >= _DAY_MIN:
        return []
    length = (end - start) if end > start else (end - start + _DAY_MIN)
    out = []
    for day in dict.fromkeys(w.days):
        s = DAYS.index(day) * _DAY_MIN + start
        if s + length <= _WEEK_MIN:
            out.append((s, s + length))
        else:  # Sunday night into Monday morning
            out += [(s, _WEEK_MIN), (0, s + length - _WEEK_MIN)]
    return out


@lru_cache(maxsize=4096)
def _spans(windows: tuple[Window, ...]) -> Spans:
    """Every window's seconds-of-week, sorted and merged (touching spans too, so they chain)."""
    merged: list[list[int]] = []
    for s, e in sorted(span for w in windows for span in _minute_spans(w)):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return tuple(s * 60 for s, _ in merged), tuple(e * 60 for _, e in merged)


def _sow(t: int, tz: ZoneInfo) -> int:
    """Local seconds-of-week of instant t."""
    offset = datetime.fromtimestamp(t, tz).utcoffset()
    assert offset is not None  # an aware datetime always has one
    return (t + int(offset.total_seconds()) + _EPOCH_SOW) % _WEEK_S


def _index(spans: Spans, sow: int) -> int:
    """The merged span holding sow, or -1."""
    i = bisect_right(spans[0], sow) - 1
    return i if i >= 0 and sow < spans[1][i] else -1


def _edge(spans: Spans, sow: int, inside: bool) -> int | None:
    """The next seconds-of-week (past the week's end if need be) where being in a window
    changes: the end of sow's span, chained across the week's end (None if it covers the
    whole week), or else the next start."""
    starts, ends = spans
    if not inside:
        j = bisect_right(starts, sow)
        return starts[j] if j < len(starts) else starts[0] + _WEEK_S
    i = _index(spans, sow)
    if ends[i] < _WEEK_S or starts[0] > 0:
        return ends[i]
    return None if i == 0 else _WEEK_S + ends[0]


def _offset(t: int, tz: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(t, tz).utcoffset()


def _shift_in(lo: int, hi: int, tz: ZoneInfo) -> int:
    """The instant in (lo, hi] where the offset at lo ends (lo and hi differ)."""
    before = _offset(lo, tz)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _offset(mid, tz) == before else (lo, mid)
    return hi


def _shift(t: int, stop: int, tz: ZoneInfo) -> int | None:
    """The offset change nearest t on the way to stop, or None. Forward: the first instant
    in (t, stop] with another offset than t's; backward: the last s in (stop, t] where
    t's offset began."""
    now, step = _offset(t, tz), _STEP_S if stop > t else -_STEP_S
    while t != stop:
        nxt = min(stop, t + step) if step > 0 else max(stop, t + step)
        if _offset(nxt, tz) != now:
            return _shift_in(min(t, nxt), max(t, nxt), tz)
        t = nxt
    return None


def window_errors(windows: Sequence[Window], kind: Literal["quiet", "allowed"], path: str) -> list[tuple[str, str]]:
    """Every problem as (field path, reason): each window's own (start, end, days) in
    window order, then one ``overlaps`` per overlapping pair, on the later window. Quiet
    windows may cross midnight, allowed ones may not. Adjacent windows do not overlap;
    windows with problems of their own are left out of the overlap check."""
    errors: list[tuple[str, str]] = []
    checked: list[tuple[int, list[tuple[int, int]]]] = []
    for i, w in enumerate(windows):
        own = _own_errors(w, kind, f"{path}[{i}]")
        errors += own
        if not own:
            checked.append((i, _minute_spans(w)))
    for n, (i, a) in enumerate(checked):
        for j, b in checked[n + 1:]:
            if any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b):
                errors.append((f"{path}[{j}]", f"overlaps {path}[{i}]"))
    if kind == "quiet" and not errors and windows and _spans(tuple(windows)) == ((0,), (_WEEK_S,)):
        # quiet_until would have no end to defer to: that is "off", and should say so
        errors.append((path, "quiet hours cover the whole week: switch the channel off (enabled: false) instead"))
    return errors


def _own_errors(w: Window, kind: str, at: str) -> list[tuple[str, str]]:
    out = []
    if w.start == "24:00":
        out.append((f"{at}.start", "start must be before 24:00"))
    if w.start == w.end:
        out.append((f"{at}.end", "empty window: end equals start"))
    elif kind == "allowed" and _minutes(w.end) < _minutes(w.start):
        out.append((f"{at}.end", "inverted window: end is before start"))
    if not w.days:
        out.append((f"{at}.days", "at least one day"))
    twice = dict.fromkeys(day for n, day in enumerate(w.days) if day in w.days[:n])  # a day thrice: once
    return out + [(f"{at}.days", f"day listed twice: {day}") for day in twice]


def wall_to_instant(naive: datetime, tz: ZoneInfo) -> float:
    """The earliest instant (epoch seconds) whose wall-clock time in tz is >= naive.
    For an ambiguous wall time (DST fall-back) that is the first occurrence (fold=0);
    for a wall time in a DST gap (spring-forward) it is the transition instant itself
    (e.g. America/New_York 2024-03-10 02:30 -> 07:00 UTC, the moment 03:00 EDT begins)."""
    first = naive.replace(tzinfo=tz, fold=0).timestamp()
    second = naive.replace(tzinfo=tz, fold=1).timestamp()
    if first <= second:
        return first
    # In a gap fold=0 reads naive with the offset before the shift (landing after
    # it) and fold=1 with the offset after (landing before it).
    return float(_shift_in(math.floor(second), math.ceil(first), tz))


def in_windows(windows: Sequence[Window], tz: ZoneInfo, now: float) -> bool:
    """Whether the wall-clock time of now in tz lies inside any window (start inclusive, end exclusive)."""
    return bool(windows) and _index(_spans(tuple(windows)), _sow(math.floor(now), tz)) >= 0


def quiet_until(windows: Sequence[Window], tz: ZoneInfo, now: float) -> float | None:
    """None if now is not inside any quiet window; else the earliest instant > now whose
    wall-clock time is not inside any window (back-to-back windows chain: 22:00-24:00
    then 00:00-07:00 defers to 07:00; a fall-back that turns the clock back out of a
    window ends it there). Also None if the windows cover the whole week."""
    if not windows:
        return None
    spans, t = _spans(tuple(windows)), math.floor(now)
    return _walk(spans, tz, t, True) if _index(spans, _sow(t, tz)) >= 0 else None


def next_allowed(windows: Sequence[Window], tz: ZoneInfo, now: float) -> float | None:
    """None if windows is empty or now is inside one; else the earliest instant > now
    whose wall-clock time is inside a window: the next window start, or the end of a
    DST gap that skipped over a start (wall_to_instant's rule)."""
    if not windows:
        return None
    spans, t = _spans(tuple(windows)), math.floor(now)
    return _walk(spans, tz, t, False) if spans[0] and _index(spans, _sow(t, tz)) < 0 else None


def _walk(spans: Spans, tz: ZoneInfo, t: int, inside: bool) -> float | None:
    """The first instant after t that is out of the windows (inside) or in one (not inside)."""
    limit, sow = t + _HORIZON_S, _sow(t, tz)
    while t <= limit:
        edge = _edge(spans, sow, inside)
        if edge is None:
            return None
        shift = _shift(t, t + edge - sow, tz)
        if shift is None:
            return float(t + edge - sow)
        t, sow = shift, _sow(shift, tz)
        if (_index(spans, sow) >= 0) != inside:
            return float(t)
    return None


def _midnight(d: datetime) -> datetime:
    return d.replace(hour=0, minute=0, second=0, microsecond=0)


# frequency -> (a wall time -> its period's first wall time, a period's first wall time -> the next one's)
_PERIODS: dict[str, tuple[Callable[[datetime], datetime], Callable[[datetime], datetime]]] = {
    "hourly": (lambda d: d.replace(minute=0, second=0, microsecond=0), lambda d: d + timedelta(hours=1)),
    "daily": (_midnight, lambda d: d + timedelta(days=1)),
    "weekly": (lambda d: _midnight(d) - timedelta(days=d.weekday()), lambda d: d + timedelta(days=7)),
    "monthly": (lambda d: _midnight(d).replace(day=1),
                lambda d: d.replace(year=d.year + d.month // 12, month=d.month % 12 + 1)),
}
# Bounds by (frequency, zone, first wall time, offset): every digest item of a period
# asks for the same ones. A hit is used only if it holds `at`, so it is never stale.
_bounds_cache: dict[tuple[object, ...], tuple[float, float]] = {}


def period_bounds(frequency: str, tz: ZoneInfo, at: float) -> tuple[float, float]:
    """(start, end) instants of the digest period containing `at`, start <= at < end: the
    unbroken stretch around `at` in which the local hour (day, Monday-week, month) stays
    the same. Its boundaries are the instants the wall clock enters a new period: top of
    the local hour, local midnight, Monday 00:00, the 1st 00:00; one in a DST gap maps by
    wall_to_instant; a fall-back is a boundary only where it turns the clock back into an
    earlier period (so New York's repeated 01:00 hour is one 2-hour period, and
    Chatham's 03:45 -> 02:45 ends the 03:00 hour at 45 minutes). Consecutive periods
    tile time: period_bounds(f, tz, end)[0] == end. Raises ValueError for another frequency."""
    if frequency not in _PERIODS:
        raise ValueError(f"unknown digest frequency {frequency!r}")
    floor, step = _PERIODS[frequency]
    t = math.floor(at)
    local = datetime.fromtimestamp(t, tz)
    label = floor(local.replace(tzinfo=None))
    key = (frequency, tz, label, local.utcoffset())
    hit = _bounds_cache.get(key)
    if hit is not None and hit[0] <= at < hit[1]:
        return hit
    if len(_bounds_cache) >= 4096:
        _bounds_cache.clear()  # past periods are not asked for again
    bounds = _bounds_cache[key] = float(_run_start(t, label, floor, tz)), float(_run_end(t, step(label), floor, tz))
    return bounds


def _wall(t: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(t, tz).replace(tzinfo=None)


def _run_start(t: int, label: datetime, floor: Callable[[datetime], datetime], tz: ZoneInfo) -> int:
    """The first instant of the unbroken run, up to t, of instants whose wall time floors to label."""
    while True:
        target = t - int((_wall(t, tz) - label).total_seconds())
        shift = _shift(t, target - 1, tz)  # a shift right at target may carry the run on from before it
        if shift is None:
            return target
        if floor(_wall(shift - 1, tz)) != label:
            return shift
        t = shift - 1


def _run_end(t: int, nxt: datetime, floor: Callable[[datetime], datetime], tz: ZoneInfo) -> int:
    """The first instant after t whose wall time floors to another label than t's (nxt is the next label)."""
    label = floor(_wall(t, tz))
    while True:
        target = t + int((nxt - _wall(t, tz)).total_seconds())
        shift = _shift(t, target, tz)
        if shift is None:
            return target
        if floor(_wall(shift, tz)) != label:
            return shift
        t = shift
