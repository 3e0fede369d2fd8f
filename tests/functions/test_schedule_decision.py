"""The market-hours decision: a normal day, a weekend, a listed holiday, and the IST day."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from core.messages import IST
from functions.schedule.decision import decide, parse_action, trading_day
from functions.schedule.errors import ScheduleEventError

HOLIDAYS = frozenset({date(2025, 2, 26), date(2025, 3, 14)})


def ist(year: int, month: int, day: int, hour: int = 9, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=IST)


def test_a_normal_weekday_starts_and_stops() -> None:
    tuesday = ist(2025, 2, 25)
    assert decide(tuesday, "start", HOLIDAYS) == "start"
    assert decide(ist(2025, 2, 25, 15, 45), "stop", HOLIDAYS) == "stop"


@pytest.mark.parametrize("day", [ist(2025, 3, 1), ist(2025, 3, 2)], ids=["saturday", "sunday"])
def test_a_weekend_start_is_skipped(day: datetime) -> None:
    assert decide(day, "start", HOLIDAYS) == "skip-weekend"


def test_a_listed_holiday_start_is_skipped() -> None:
    assert decide(ist(2025, 2, 26), "start", HOLIDAYS) == "skip-holiday"


def test_stop_is_never_skipped() -> None:
    assert decide(ist(2025, 2, 26, 15, 45), "stop", HOLIDAYS) == "stop"
    assert decide(ist(2025, 3, 1, 15, 45), "stop", HOLIDAYS) == "stop"


def test_the_day_is_the_ist_calendar_day_not_the_utc_one() -> None:
    # 2025-02-25 20:00 UTC is already Wednesday 26th (a holiday) at 01:30 IST.
    late_utc = datetime(2025, 2, 25, 20, 0, tzinfo=UTC)
    assert trading_day(late_utc) == date(2025, 2, 26)
    assert decide(late_utc, "start", HOLIDAYS) == "skip-holiday"
    # Friday 2025-02-28 20:00 UTC is Saturday in India.
    assert decide(datetime(2025, 2, 28, 20, 0, tzinfo=UTC), "start", HOLIDAYS) == "skip-weekend"


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(datetime(2025, 2, 25, 9, 0), "start", HOLIDAYS)


@pytest.mark.parametrize("value", [None, "", "START", "restart", 1])
def test_only_start_and_stop_are_actions(value: object) -> None:
    with pytest.raises(ScheduleEventError, match="start"):
        parse_action(value)
