"""The holiday calendar shipped with the scheduler agrees with pandas_market_calendars XNSE."""

from __future__ import annotations

import json
from datetime import date

import pytest

from functions.schedule.errors import CalendarError
from functions.schedule.nse_calendar import HolidayCalendar, load_shipped


def test_the_shipped_calendar_loads_and_lists_only_weekdays() -> None:
    calendar = load_shipped()
    assert calendar.first_year <= calendar.last_year
    assert calendar.holidays, "an empty calendar would start the streamer on every holiday"
    assert all(day.weekday() < 5 for day in calendar.holidays)
    assert date(2025, 8, 15) in calendar  # Independence Day, a Friday in 2025
    assert calendar.covers(date(2025, 1, 1)) and not calendar.covers(date(2100, 1, 1))


def test_the_shipped_calendar_agrees_with_pandas_market_calendars() -> None:
    mcal = pytest.importorskip("pandas_market_calendars")
    import pandas as pd

    shipped = load_shipped()
    xnse = mcal.get_calendar("XNSE")
    listed_until = int(pd.DatetimeIndex(xnse.holidays().holidays).max().year)
    last = min(shipped.last_year, listed_until)
    assert last >= shipped.first_year, "the library lists no year the shipped file covers"

    start, end = f"{shipped.first_year}-01-01", f"{last}-12-31"
    sessions = {stamp.date() for stamp in xnse.valid_days(start, end)}
    expected = {d.date() for d in pd.bdate_range(start, end) if d.date() not in sessions}
    actual = {day for day in shipped.holidays if day.year <= last}
    assert actual == expected, (
        f"missing {sorted(expected - actual)}, extra {sorted(actual - expected)}: "
        "run scripts/gen_nse_holidays.py"
    )


def test_the_file_round_trips_through_its_document_form() -> None:
    calendar = HolidayCalendar.build(
        [date(2026, 1, 26)], first_year=2026, last_year=2026, source="test"
    )
    assert HolidayCalendar.from_document(json.loads(json.dumps(calendar.to_document()))) == calendar


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "JSON object"),
        ({"first_year": 2026, "holidays": []}, "malformed"),
        ({"first_year": 2026, "last_year": 2026, "holidays": ["26/01/2026"]}, "malformed"),
        ({"first_year": 2027, "last_year": 2026, "holidays": []}, "covers no year"),
        ({"first_year": 2026, "last_year": 2026, "holidays": ["2025-01-26"]}, "outside"),
    ],
)
def test_a_malformed_calendar_is_refused(document: object, message: str) -> None:
    with pytest.raises(CalendarError, match=message):
        HolidayCalendar.from_document(document)
