"""policy.windows: quiet hours, allowed hours and digest periods across DST."""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from policy.windows import (
    DAYS,
    Window,
    in_windows,
    next_allowed,
    period_bounds,
    quiet_until,
    wall_to_instant,
    window_errors,
)

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
KOLKATA = ZoneInfo("Asia/Kolkata")
CHATHAM = ZoneInfo("Pacific/Chatham")
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "America/Sao_Paulo",
         "Pacific/Chatham", "Asia/Kolkata"]
LO = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp())
HI = int(datetime(2030, 12, 31, tzinfo=UTC).timestamp())
PROPS = settings(max_examples=200, deadline=None)


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def w(start: str, end: str, *days: str) -> Window:
    return Window(start=start, end=end, days=days) if days else Window(start=start, end=end)


# ---- an independent reading of the windows and the zone, for the properties ----

def offset(t: int, tz: ZoneInfo) -> timedelta:
    return datetime.fromtimestamp(t, tz).utcoffset()


@cache
def transitions(name: str) -> tuple[int, ...]:
    """Every instant in 2020-2030 (and a week around) where the zone's offset changes."""
    tz, out = ZoneInfo(name), []
    day = LO - 7 * 86400
    before = offset(day, tz)
    while day < HI + 7 * 86400:
        after = offset(day + 86400, tz)
        if after != before:
            lo, hi = day, day + 86400
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid, tz) == before else (lo, mid)
            out.append(hi)
        day, before = day + 86400, after
    return tuple(out)


def shifts_between(name: str, a: float, b: float) -> tuple[int, ...]:
    ts = transitions(name)
    return ts[bisect.bisect_left(ts, a):bisect.bisect_left(ts, b)]


def oracle_in(windows: list[Window], tz: ZoneInfo, t: float) -> bool:
    """Window membership read straight off the local date and time."""
    d = datetime.fromtimestamp(int(t // 1), tz)
    minute = d.hour * 60 + d.minute + d.second / 60
    today, yesterday = DAYS[d.weekday()], DAYS[d.weekday() - 1]
    for win in windows:
        s, e = minutes(win.start), minutes(win.end)
        if s < e and today in win.days and s <= minute < e:
            return True
        if e < s and ((today in win.days and minute >= s) or (yesterday in win.days and minute < e)):
            return True
    return False


def minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def coverage(win: Window) -> set[int]:
    """Minutes-of-week the window covers, every one listed."""
    s, e = minutes(win.start), minutes(win.end)
    length = e - s if e > s else e - s + 1440
    out: set[int] = set()
    for day in win.days:
        first = DAYS.index(day) * 1440 + s
        out.update(range(first, min(first + length, 10080)), range(0, first + length - 10080))
    return out


# ---- strategies ----

# Quarter hours (every DST shift of the test zones falls on one, so windows meet DST
# edges often) and a few odd minutes; one draw each keeps example generation cheap.
MINUTE = st.sampled_from([*range(0, 1440, 15), 1, 59, 61, 179, 1439])
END = st.sampled_from([*range(0, 1441, 15), 1, 59, 61, 179, 1439])  # 1440 is "24:00"


def days_of(mask: int) -> tuple[str, ...]:
    return tuple(day for i, day in enumerate(DAYS) if mask >> i & 1)


# Every day (the default) half the time, else a bit mask of days.
DAY_LISTS = st.one_of(st.just(DAYS), st.integers(1, 127).map(days_of))


def hhmm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def make_window(start: int, end: int, days: tuple[str, ...]) -> Window:
    return Window(start=hhmm(start), end=hhmm(end), days=days)


def make_allowed(start: int, end: int, days: tuple[str, ...]) -> Window:
    return make_window(min(start, end), max(start, end), days)


# Any windows at all, valid or not (a start of 24:00, an empty day list, a day twice).
RAW_WINDOW = st.builds(make_window, END, END,
                       st.one_of(DAY_LISTS, st.lists(st.sampled_from(DAYS), max_size=3).map(tuple)))
QUIET_WINDOWS = st.lists(st.builds(make_window, MINUTE, END, DAY_LISTS), min_size=1, max_size=4)
ALLOWED_WINDOWS = st.lists(st.builds(make_allowed, MINUTE, END, DAY_LISTS), min_size=1, max_size=4)


def keep_valid(kind: str):
    """Drawn windows, each kept only if it adds no error: a valid, non-overlapping list."""
    def keep(drawn: list[Window]) -> list[Window]:
        kept: list[Window] = []
        for candidate in drawn:
            if not window_errors([*kept, candidate], kind, "w"):
                kept.append(candidate)
        return kept or [Window(start="22:00", end="07:00") if kind == "quiet" else Window(start="09:00", end="17:00")]
    return keep


VALID_QUIET = QUIET_WINDOWS.map(keep_valid("quiet"))
VALID_ALLOWED = ALLOWED_WINDOWS.map(keep_valid("allowed"))
NEAR_SHIFT = {name: st.sampled_from(transitions(name)) for name in ZONES if transitions(name)}
FRACTION = st.sampled_from([0.0, 0.0, 0.25, 0.999999])


@st.composite
def zone_and_instant(draw) -> tuple[str, ZoneInfo, float]:
    """A zone and an instant in 2020-2030, half the time within 3 days of one of its DST shifts."""
    name = draw(st.sampled_from(ZONES))
    if name in NEAR_SHIFT and draw(st.booleans()):
        t = draw(NEAR_SHIFT[name]) + draw(st.integers(-3 * 86400, 3 * 86400))
    else:
        t = draw(st.integers(LO, HI))
    return name, ZoneInfo(name), t + draw(FRACTION)


def covers_week(windows: list[Window]) -> bool:
    return len(set().union(*map(coverage, windows))) == 10080


# ---- Window and window_errors ----

def test_window_decodes_24_00_end_and_refuses_bad_input() -> None:
    win = msgspec.json.decode(b'{"start": "22:00", "end": "24:00"}', type=Window)
    assert win == Window(start="22:00", end="24:00") and win.days == DAYS
    for bad in (b'{"start": "24:01", "end": "07:00"}', b'{"start": "7:00", "end": "08:00"}',
                b'{"start": "07:00", "end": "08:00", "days": ["monday"]}',
                b'{"start": "07:00", "end": "08:00", "extra": 1}'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(bad, type=Window)


def test_window_errors_name_each_problem() -> None:
    p = "preferences[2].quiet_hours"
    assert window_errors([w("07:00", "07:00")], "quiet", p) == [(f"{p}[0].end", "empty window: end equals start")]
    assert window_errors([w("22:00", "07:00")], "allowed", p) == [
        (f"{p}[0].end", "inverted window: end is before start")]
    assert window_errors([w("22:00", "07:00"), w("09:00", "22:00")], "quiet", p) == []
    assert window_errors([w("09:00", "24:00")], "allowed", p) == []
    assert window_errors([w("24:00", "07:00")], "quiet", p) == [(f"{p}[0].start", "start must be before 24:00")]
    assert window_errors([w("01:00", "02:00", "mon", "tue", "mon", "mon")], "quiet", p) == [
        (f"{p}[0].days", "day listed twice: mon")]
    assert window_errors([Window(start="01:00", end="02:00", days=())], "quiet", p) == [
        (f"{p}[0].days", "at least one day")]


def test_window_errors_overlaps_across_midnight_and_week_wrap_but_not_adjacent() -> None:
    p = "q"
    assert window_errors([w("22:00", "07:00", "sun"), w("06:00", "08:00", "mon")], "quiet", p) == [
        ("q[1]", "overlaps q[0]")]
    assert window_errors([w("22:00", "07:00", "sun"), w("07:00", "08:00", "mon")], "quiet", p) == []
    assert window_errors([w("22:00", "24:00"), w("00:00", "07:00")], "quiet", p) == []
    assert window_errors([w("22:00", "07:00", "sat"), w("01:00", "02:00", "mon"), w("03:00", "04:00", "sun")],
                         "quiet", p) == [("q[2]", "overlaps q[0]")]
    assert window_errors([w("09:00", "12:00"), w("10:00", "11:00", "fri"), w("11:30", "13:00", "sat")],
                         "allowed", p) == [("q[1]", "overlaps q[0]"), ("q[2]", "overlaps q[0]")]


@PROPS
@given(st.lists(RAW_WINDOW, max_size=4), st.sampled_from(["quiet", "allowed"]))
def test_window_errors_agree_with_brute_force_overlap(windows: list[Window], kind: str) -> None:
    errors = window_errors(windows, kind, "w")
    covered = [coverage(win) for win in windows]
    if not errors:
        for i in range(len(windows)):
            for j in range(i + 1, len(windows)):
                assert not covered[i] & covered[j], (windows[i], windows[j])
    for where, why in errors:
        if why.startswith("overlaps"):
            i, j = int(why.split("[")[-1][:-1]), int(where.split("[")[-1][:-1])
            assert i < j and covered[i] & covered[j]


# ---- wall_to_instant ----

def test_wall_to_instant_gap_overlap_and_plain() -> None:
    assert wall_to_instant(datetime(2024, 3, 10, 2, 30), NY) == utc(2024, 3, 10, 7)
    assert wall_to_instant(datetime(2024, 3, 10, 3, 0), NY) == utc(2024, 3, 10, 7)
    assert wall_to_instant(datetime(2024, 11, 3, 1, 30), NY) == utc(2024, 11, 3, 5, 30)  # 01:30 EDT, the first
    assert wall_to_instant(datetime(2024, 3, 31, 2, 15), BERLIN) == utc(2024, 3, 31, 1)
    assert wall_to_instant(datetime(2024, 10, 6, 2, 15), LORD_HOWE) == utc(2024, 10, 5, 15, 30)
    assert wall_to_instant(datetime(2024, 6, 1, 12, 0, 0, 500000), KOLKATA) == utc(2024, 6, 1, 6, 30) + 0.5


@PROPS
@given(zone_and_instant())
def test_wall_to_instant_is_earliest_instant_at_or_after_wall(case) -> None:
    _, tz, t = case
    naive = datetime.fromtimestamp(int(t), tz).replace(tzinfo=None)
    r = wall_to_instant(naive, tz)
    assert r <= int(t)
    assert datetime.fromtimestamp(r, tz).replace(tzinfo=None) >= naive
    assert datetime.fromtimestamp(r - 1, tz).replace(tzinfo=None) < naive


# ---- in_windows / quiet_until / next_allowed: examples ----

def test_window_crossing_midnight_is_start_inclusive_end_exclusive() -> None:
    q = [w("22:00", "07:00")]
    assert in_windows(q, KOLKATA, utc(2024, 6, 4, 1, 29, 59))  # 06:59:59 IST
    assert not in_windows(q, KOLKATA, utc(2024, 6, 4, 1, 30))  # 07:00 IST
    assert in_windows(q, KOLKATA, utc(2024, 6, 3, 16, 30))  # 22:00 IST
    assert not in_windows(q, KOLKATA, utc(2024, 6, 3, 16, 29, 59) + 0.999)
    assert quiet_until(q, KOLKATA, utc(2024, 6, 3, 17)) == utc(2024, 6, 4, 1, 30)
    assert quiet_until(q, KOLKATA, utc(2024, 6, 3, 12)) is None
    assert not in_windows([], KOLKATA, 0.0) and quiet_until([], KOLKATA, 0.0) is None
    assert next_allowed([], KOLKATA, 0.0) is None


def test_sunday_window_wraps_into_monday() -> None:
    q = [w("22:00", "07:00", "sun")]
    sun_2300 = utc(2024, 6, 9, 23)  # UTC: Sunday
    assert in_windows(q, ZoneInfo("UTC"), sun_2300)
    assert in_windows(q, ZoneInfo("UTC"), utc(2024, 6, 10, 6, 59, 59))
    assert not in_windows(q, ZoneInfo("UTC"), utc(2024, 6, 10, 7))
    assert not in_windows(q, ZoneInfo("UTC"), utc(2024, 6, 8, 23))  # Saturday night
    assert not in_windows(q, ZoneInfo("UTC"), utc(2024, 6, 10, 23))  # Monday night
    assert quiet_until(q, ZoneInfo("UTC"), sun_2300) == utc(2024, 6, 10, 7)
    assert next_allowed(q, ZoneInfo("UTC"), utc(2024, 6, 10, 8)) == utc(2024, 6, 16, 22)


def test_back_to_back_windows_chain_even_across_the_week() -> None:
    q = [w("22:00", "24:00"), w("00:00", "07:00")]
    assert quiet_until(q, BERLIN, utc(2024, 6, 5, 20, 30)) == utc(2024, 6, 6, 5)  # 22:30 CEST -> 07:00
    q = [w("00:00", "07:00", "mon"), w("20:00", "24:00", "sun")]
    assert quiet_until(q, BERLIN, utc(2024, 6, 9, 19)) == utc(2024, 6, 10, 5)


def test_24_00_end_means_midnight() -> None:
    q = [w("21:00", "24:00")]
    assert in_windows(q, KOLKATA, utc(2024, 6, 3, 18, 29, 59))  # 23:59:59 IST
    assert not in_windows(q, KOLKATA, utc(2024, 6, 3, 18, 30))  # 00:00 IST
    assert quiet_until(q, KOLKATA, utc(2024, 6, 3, 16)) == utc(2024, 6, 3, 18, 30)


def test_new_york_spring_forward_gap() -> None:
    q = [w("01:00", "02:30")]
    assert quiet_until(q, NY, utc(2024, 3, 10, 6, 30)) == utc(2024, 3, 10, 7)  # 01:30 EST -> 03:00 EDT
    q = [w("01:00", "02:15"), w("02:45", "04:00")]  # the jump lands in the second window
    assert quiet_until(q, NY, utc(2024, 3, 10, 6, 30)) == utc(2024, 3, 10, 8)  # 04:00 EDT
    allowed = [w("02:30", "05:00")]
    assert next_allowed(allowed, NY, utc(2024, 3, 10, 6)) == utc(2024, 3, 10, 7)  # starts at 03:00 EDT
    assert next_allowed([w("08:00", "17:00")], NY, utc(2024, 3, 10, 6)) == utc(2024, 3, 10, 12)  # 08:00 EDT


def test_new_york_fall_back_overlap() -> None:
    q = [w("00:00", "01:30")]
    assert quiet_until(q, NY, utc(2024, 11, 3, 4, 30)) == utc(2024, 11, 3, 5, 30)  # 00:30 EDT -> 01:30 EDT
    assert in_windows(q, NY, utc(2024, 11, 3, 6, 10))  # 01:10 EST: the repeated hour is quiet again
    assert quiet_until(q, NY, utc(2024, 11, 3, 6, 10)) == utc(2024, 11, 3, 6, 30)  # -> 01:30 EST
    q = [w("01:45", "02:30")]  # turning the clock back leaves this window early
    assert quiet_until(q, NY, utc(2024, 11, 3, 5, 50)) == utc(2024, 11, 3, 6)
    assert next_allowed(q, NY, utc(2024, 11, 3, 6)) == utc(2024, 11, 3, 6, 45)  # 01:45 EST


def test_berlin_and_lord_howe_nights_across_dst() -> None:
    q = [w("22:00", "07:00")]
    assert quiet_until(q, BERLIN, utc(2024, 3, 30, 22)) == utc(2024, 3, 31, 5)  # 07:00 CEST
    assert quiet_until(q, BERLIN, utc(2024, 10, 26, 21)) == utc(2024, 10, 27, 6)  # 07:00 CET
    q = [w("01:00", "02:15")]  # Lord Howe 2024-10-06 02:00 +10:30 -> 02:30 +11
    assert quiet_until(q, LORD_HOWE, utc(2024, 10, 5, 15)) == utc(2024, 10, 5, 15, 30)
    assert next_allowed([w("02:15", "03:00")], LORD_HOWE, utc(2024, 10, 5, 15)) == utc(2024, 10, 5, 15, 30)


def test_windows_covering_the_whole_week_never_end() -> None:
    q = [w("00:00", "24:00")]
    assert in_windows(q, NY, utc(2024, 3, 10, 7)) and quiet_until(q, NY, utc(2024, 3, 10, 7)) is None
    q = [w("07:00", "07:00"), w("24:00", "07:00")]  # refused by window_errors; cover nothing
    assert not in_windows(q, NY, 0.0) and next_allowed(q, NY, 0.0) is None


# ---- in_windows / quiet_until / next_allowed: properties ----

@PROPS
@given(VALID_QUIET, zone_and_instant())
def test_quiet_until_is_the_first_instant_out_of_quiet_hours(windows: list[Window], case) -> None:
    name, tz, now = case
    assert in_windows(windows, tz, now) == oracle_in(windows, tz, now)
    u = quiet_until(windows, tz, now)
    if u is None:
        assert not in_windows(windows, tz, now) or covers_week(windows)
        return
    assert u > now and u == int(u) and not in_windows(windows, tz, u)
    inside = {now, u - 1, u - 0.5, *(now + (u - now) * k / 7 for k in range(1, 7))}
    inside |= set(shifts_between(name, now, u)) | {s - 1 for s in shifts_between(name, now + 1, u)}
    assert all(in_windows(windows, tz, s) for s in inside if now <= s < u)


@PROPS
@given(VALID_ALLOWED, zone_and_instant())
def test_next_allowed_is_the_next_window_start(windows: list[Window], case) -> None:
    name, tz, now = case
    r = next_allowed(windows, tz, now)
    assert (r is None) == in_windows(windows, tz, now)
    if r is None:
        return
    assert r > now and in_windows(windows, tz, r) and not in_windows(windows, tz, r - 1)
    outside = {now, *(now + (r - now) * k / 7 for k in range(1, 7))} | set(shifts_between(name, now, r))
    assert not any(in_windows(windows, tz, s) for s in outside if now <= s < r)


# ---- period_bounds ----

def test_period_bounds_examples() -> None:
    assert period_bounds("daily", KOLKATA, utc(2024, 6, 3, 12)) == (utc(2024, 6, 2, 18, 30), utc(2024, 6, 3, 18, 30))
    assert period_bounds("hourly", NY, utc(2024, 3, 10, 6, 30)) == (utc(2024, 3, 10, 6), utc(2024, 3, 10, 7))
    assert period_bounds("hourly", NY, utc(2024, 3, 10, 7, 30)) == (utc(2024, 3, 10, 7), utc(2024, 3, 10, 8))
    # New York's 01:00 hour happens twice on 2024-11-03: one 2-hour period.
    assert period_bounds("hourly", NY, utc(2024, 11, 3, 6, 30)) == (utc(2024, 11, 3, 5), utc(2024, 11, 3, 7))
    assert period_bounds("daily", NY, utc(2024, 11, 3, 12)) == (utc(2024, 11, 3, 4), utc(2024, 11, 4, 5))
    assert period_bounds("weekly", BERLIN, utc(2024, 6, 5)) == (utc(2024, 6, 2, 22), utc(2024, 6, 9, 22))
    assert period_bounds("monthly", BERLIN, utc(2024, 3, 15)) == (utc(2024, 2, 29, 23), utc(2024, 3, 31, 22))
    assert period_bounds("monthly", BERLIN, utc(2024, 12, 31, 23, 30)) == (utc(2024, 12, 31, 23), utc(2025, 1, 31, 23))
    # Lord Howe 2024-10-06 02:00 +10:30 -> 02:30 +11: the 02:00 hour lasts 30 minutes.
    assert period_bounds("hourly", LORD_HOWE, utc(2024, 10, 5, 15, 45)) == (
        utc(2024, 10, 5, 15, 30), utc(2024, 10, 5, 16))
    # Lord Howe 2024-04-07 02:00 +11 -> 01:30 +10:30: the 01:00 hour lasts 90 minutes.
    assert period_bounds("hourly", LORD_HOWE, utc(2024, 4, 6, 14, 45)) == (utc(2024, 4, 6, 14), utc(2024, 4, 6, 15, 30))
    # Chatham 2024-09-29 02:45 +12:45 -> 03:45 +13:45: the 03:00 hour lasts 15 minutes.
    assert period_bounds("hourly", CHATHAM, utc(2024, 9, 28, 14, 5)) == (utc(2024, 9, 28, 14), utc(2024, 9, 28, 14, 15))
    # Chatham 2024-04-07 03:45 +13:45 -> 02:45 +12:45: the clock turns back into the 02:00 hour.
    assert period_bounds("hourly", CHATHAM, utc(2024, 4, 6, 13, 25)) == (utc(2024, 4, 6, 13, 15), utc(2024, 4, 6, 14))
    assert period_bounds("hourly", CHATHAM, utc(2024, 4, 6, 14, 5)) == (utc(2024, 4, 6, 14), utc(2024, 4, 6, 14, 15))
    assert period_bounds("hourly", CHATHAM, utc(2024, 4, 6, 14, 25)) == (
        utc(2024, 4, 6, 14, 15), utc(2024, 4, 6, 15, 15))
    with pytest.raises(ValueError):
        period_bounds("immediate", NY, 0.0)


LENGTHS = {"hourly": (15 * 60, 2 * 3600), "daily": (22 * 3600, 26 * 3600),
           "weekly": (7 * 86400 - 3600, 7 * 86400 + 3600), "monthly": (28 * 86400 - 3600, 31 * 86400 + 3600)}


@PROPS
@given(st.sampled_from(list(LENGTHS)), zone_and_instant())
def test_period_bounds_contain_tile_and_start_on_the_wall_clock(frequency: str, case) -> None:
    name, tz, at = case
    start, end = period_bounds(frequency, tz, at)
    assert start <= at < end
    assert period_bounds(frequency, tz, (start + end) // 2) == (start, end)
    assert period_bounds(frequency, tz, end)[0] == end
    assert period_bounds(frequency, tz, start - 1)[1] == start
    low, high = LENGTHS[frequency]
    assert low <= end - start <= high
    wall = datetime.fromtimestamp(start, tz)
    shifted = offset(int(start) - 1, tz) != offset(int(start), tz)
    if frequency != "hourly" and not shifted:
        assert (wall.hour, wall.minute, wall.second) == (0, 0, 0)
    if frequency == "weekly" and not shifted:
        assert wall.weekday() == 0
    if frequency == "monthly" and not shifted:
        assert wall.day == 1
    if frequency == "hourly" and not shifted:
        assert (wall.minute, wall.second) == (0, 0)
