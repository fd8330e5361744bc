"""Maintenance windows (agent/quorum_rollout/windows.py): when the leader may open a batch."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from quorum_rollout import windows

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz: ZoneInfo = BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


NIGHTS = [{"days": ["mon", "tue", "wed", "thu"], "start": "02:00", "end": "05:00", "timezone": "Europe/Berlin"}]


def test_no_window_is_always_open():
    assert windows.next_opening([], at("2026-12-05T12:00")) is None


@pytest.mark.parametrize(("now", "expected"), [
    ("2026-12-07T02:00", None),                          # Monday, as it opens
    ("2026-12-07T04:59", None),
    ("2026-12-07T05:00", "2026-12-08T02:00+01:00"),      # closed at its end: Tuesday's
    ("2026-12-07T01:59", "2026-12-07T02:00+01:00"),
    ("2026-12-04T03:00", "2026-12-07T02:00+01:00"),      # a Friday: next Monday
    ("2026-12-10T06:00", "2026-12-14T02:00+01:00"),      # Thursday after the window
])
def test_next_opening_in_the_windows_own_time_zone(now, expected):
    got = windows.next_opening(NIGHTS, at(now))
    assert (got and got[1]) == expected
    if got:
        assert got[0] == at(expected[:16])


def test_a_window_that_crosses_midnight_belongs_to_the_day_it_opens():
    late = [{"days": ["fri"], "start": "22:00", "end": "02:00", "timezone": "UTC"}]
    utc = ZoneInfo("UTC")
    assert windows.next_opening(late, at("2026-12-05T01:30", utc)) is None        # Saturday 01:30: Friday's
    assert windows.next_opening(late, at("2026-12-06T01:30", utc))[1] == "2026-12-11T22:00+00:00"
    whole = [{"days": ["sun"], "start": "00:00", "end": "00:00", "timezone": "UTC"}]
    assert windows.next_opening(whole, at("2026-12-06T23:59", utc)) is None


def test_daylight_saving_time_is_local_time():
    # After Berlin went to summer time (2027-03-28) the window opens at 02:00 CEST: 00:00 UTC, an hour
    # earlier in UTC than in winter (01:00 UTC).
    summer = windows.next_opening(NIGHTS, at("2027-03-30T01:00"))
    assert summer[1] == "2027-03-30T02:00+02:00" and summer[0] == at("2027-03-30T00:00", ZoneInfo("UTC"))


def test_union_of_windows_and_shape_errors():
    both = [*NIGHTS, {"days": ["sat"], "start": "10:00", "end": "11:00", "timezone": "UTC"}]
    assert windows.next_opening(both, at("2026-12-05T10:30", ZoneInfo("UTC"))) is None
    assert windows.shape_error(both) is None
    assert "exactly" in windows.shape_error([{"start": "01:00"}])
    assert "HH:MM" in windows.shape_error([{**NIGHTS[0], "end": "24:00"}])
    assert windows.iso(0) == "1970-01-01T00:00:00Z"
