from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from core.errors import ConfigError
from core.messages import IST
from streamer.market_hours import MarketHours, parse_clock

# 2025-01-06 was a Monday.
MONDAY = datetime(2025, 1, 6, tzinfo=IST)


def at(day: datetime, hh: int, mm: int) -> datetime:
    return day.replace(hour=hh, minute=mm)


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        (at(MONDAY, 9, 14), False),
        (at(MONDAY, 9, 15), True),
        (at(MONDAY, 12, 0), True),
        (at(MONDAY, 15, 29), True),
        (at(MONDAY, 15, 30), False),
        (at(MONDAY + timedelta(days=5), 11, 0), False),  # Saturday
        (at(MONDAY + timedelta(days=6), 11, 0), False),  # Sunday
        (at(MONDAY + timedelta(days=4), 11, 0), True),  # Friday
    ],
)
def test_open_during_the_session_on_weekdays(moment: datetime, is_open: bool) -> None:
    assert MarketHours().is_open(moment) is is_open


def test_other_time_zones_are_converted() -> None:
    # 04:00 UTC is 09:30 IST.
    assert MarketHours().is_open(datetime(2025, 1, 6, 4, 0, tzinfo=UTC))
    assert not MarketHours().is_open(datetime(2025, 1, 6, 3, 30, tzinfo=UTC))


def test_stops_after_close_plus_grace() -> None:
    hours = MarketHours(grace=timedelta(minutes=10))
    assert hours.stop_at(at(MONDAY, 9, 0)) == at(MONDAY, 15, 40)
    assert hours.stop_at(at(MONDAY, 15, 35)) == at(MONDAY, 15, 40)
    # Started after today's stop: runs through the next session.
    assert hours.stop_at(at(MONDAY, 20, 0)) == at(MONDAY + timedelta(days=1), 15, 40)
    friday = MONDAY + timedelta(days=4)
    assert hours.stop_at(at(friday, 18, 0)) == at(MONDAY + timedelta(days=7), 15, 40)


def test_always_open_never_stops() -> None:
    hours = MarketHours(always_open=True)
    assert hours.is_open(at(MONDAY + timedelta(days=6), 3, 0))
    assert hours.stop_at(at(MONDAY, 9, 0)) is None


def test_configurable_hours_and_parsing() -> None:
    hours = MarketHours(open=parse_clock("10:00"), close=parse_clock("11:00"))
    assert hours.is_open(at(MONDAY, 10, 30))
    assert not hours.is_open(at(MONDAY, 9, 30))
    assert parse_clock(" 09:15 ") == time(9, 15)
    with pytest.raises(ConfigError, match="STREAMER_MARKET_OPEN"):
        parse_clock("9am", name="STREAMER_MARKET_OPEN")
    with pytest.raises(ConfigError):
        parse_clock("25:00")
    with pytest.raises(ConfigError, match="after open"):
        MarketHours(open=time(15, 0), close=time(9, 0))
