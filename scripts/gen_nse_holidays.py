"""Generate `functions/schedule/nse_holidays.json` from pandas_market_calendars' "XNSE".

    .venv/bin/python scripts/gen_nse_holidays.py                 # 2024 .. last listed year
    .venv/bin/python scripts/gen_nse_holidays.py --first-year 2025 --check

A holiday here is a weekday on which NSE does not trade (the schedule only runs Monday-Friday).
The last year is the last one the installed calendar lists holidays for: beyond it the library
would call every weekday a trading day, which would be wrong, not merely unknown. Run this when
NSE publishes the next year's list and `pandas_market_calendars` has picked it up.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from functions.schedule.nse_calendar import CALENDAR_FILE, HolidayCalendar  # noqa: E402

OUTPUT = REPO_ROOT / "functions" / "schedule" / CALENDAR_FILE
CALENDAR = "XNSE"
DEFAULT_FIRST_YEAR = 2024


def last_listed_year() -> int:
    import pandas as pd
    import pandas_market_calendars as mcal

    listed = pd.DatetimeIndex(mcal.get_calendar(CALENDAR).holidays().holidays)
    return int(listed.max().year)


def weekday_closures(first_year: int, last_year: int) -> list[date]:
    import pandas as pd
    import pandas_market_calendars as mcal

    calendar = mcal.get_calendar(CALENDAR)
    start, end = f"{first_year}-01-01", f"{last_year}-12-31"
    sessions = {stamp.date() for stamp in calendar.valid_days(start, end)}
    return [stamp.date() for stamp in pd.bdate_range(start, end) if stamp.date() not in sessions]


def generate(first_year: int, last_year: int | None = None) -> HolidayCalendar:
    import pandas_market_calendars as mcal

    last = last_listed_year() if last_year is None else last_year
    return HolidayCalendar.build(
        weekday_closures(first_year, last),
        first_year=first_year,
        last_year=last,
        source=f"pandas_market_calendars {mcal.__version__} calendar {CALENDAR}",
    )


def render(calendar: HolidayCalendar) -> str:
    return json.dumps(calendar.to_document(calendar=CALENDAR), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-year", type=int, default=DEFAULT_FIRST_YEAR)
    parser.add_argument("--last-year", type=int, default=None,
                        help="default: the last year the calendar lists holidays for")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from what would be generated")
    args = parser.parse_args(argv)
    calendar = generate(args.first_year, args.last_year)
    text = render(calendar)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run scripts/gen_nse_holidays.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}: {len(calendar.holidays)} weekday holidays, "
          f"{calendar.first_year}-{calendar.last_year}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
