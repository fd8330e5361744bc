"""Maintenance windows: when a group's leader may open a batch.

A window is plain data, as the agent config writes it and a release keeps it (replicated):

    {"days": ["mon", "tue"], "start": "02:00", "end": "05:30", "timezone": "Europe/Berlin"}

It opens at `start` on each of `days` (local time in `timezone`) and closes at `end`: the same
day, or the next day when `end` is not after `start` (`"22:00"`-`"02:00"` crosses midnight,
`"00:00"`-`"00:00"` is the whole day). A list of windows is their union; no window at all means
always open.

`shape_error` is pure and used by the state machine to check a `start` command. `next_opening`
reads time zone data (zoneinfo) and is called by the leader only, with the time passed in: the
state machine never evaluates a window, since two members' tz databases may differ and every
member must compute the same state from the same log.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FIELDS = ("days", "start", "end", "timezone")
WINDOWS_LIMIT = 32
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_TZ = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")


def shape_error(windows: Any) -> str | None:
    """Why `windows` is not a list of windows (None when it is one); no time zone data is read."""
    if not isinstance(windows, list) or len(windows) > WINDOWS_LIMIT:
        return f"windows must be a list of at most {WINDOWS_LIMIT} windows"
    for i, w in enumerate(windows):
        if not isinstance(w, dict) or sorted(w) != sorted(FIELDS):
            return f"windows[{i}] must have exactly {', '.join(FIELDS)}"
        days = w["days"]
        if not isinstance(days, list) or not days or any(d not in DAYS for d in days) or len(set(days)) != len(days):
            return f"windows[{i}].days must be a non-empty list of distinct {'/'.join(DAYS)}"
        for key in ("start", "end"):
            if not isinstance(w[key], str) or not _HHMM.match(w[key]):
                return f"windows[{i}].{key} must be HH:MM (00:00 to 23:59)"
        if not isinstance(w["timezone"], str) or not _TZ.match(w["timezone"]):
            return f"windows[{i}].timezone must be a time zone name such as UTC or Europe/Berlin"
    return None


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _spans(window: dict[str, Any], around: date) -> list[tuple[datetime, datetime]]:
    """The window's openings that start from the day before `around` to a week after it."""
    tz = ZoneInfo(window["timezone"])
    start, end = _clock(window["start"]), _clock(window["end"])
    spans = []
    for offset in range(-1, 9):
        day = around + timedelta(days=offset)
        if DAYS[day.weekday()] not in window["days"]:
            continue
        opens = datetime.combine(day, start, tzinfo=tz)
        closes = datetime.combine(day + timedelta(days=0 if end > start else 1), end, tzinfo=tz)
        spans.append((opens, closes))
    return spans


def next_opening(windows: list[dict[str, Any]], now: float) -> tuple[float, str] | None:
    """None when a batch may open at `now` (inside a window, or no windows); else (the time the
    next window opens, that time in ISO 8601 in the window's own time zone)."""
    if not windows:
        return None
    best: tuple[float, str] | None = None
    for window in windows:
        local = datetime.fromtimestamp(now, ZoneInfo(window["timezone"]))
        for opens, closes in _spans(window, local.date()):
            if opens.timestamp() <= now < closes.timestamp():
                return None
            if opens.timestamp() > now and (best is None or opens.timestamp() < best[0]):
                best = (opens.timestamp(), opens.isoformat(timespec="minutes"))
    return best


def iso(ts: float) -> str:
    """A wall-clock time in ISO 8601, UTC (for status texts)."""
    return datetime.fromtimestamp(ts, ZoneInfo("UTC")).isoformat(timespec="seconds").replace("+00:00", "Z")
