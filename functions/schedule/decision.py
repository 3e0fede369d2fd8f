"""What the market-hours schedule should do now (pure).

`decide(now, action, holidays)`:
  start on a weekday that is not an NSE holiday     -> "start"
  start on a Saturday or Sunday                     -> "skip-weekend"
  start on a listed holiday                         -> "skip-holiday"
  stop, any day                                     -> "stop"

Stopping is never skipped: it is idempotent, and a streamer somebody started by hand on a
holiday should not run through the night. The day is the IST calendar day of `now` (India has
no daylight saving, so a fixed +05:30 offset is exact).
"""

from __future__ import annotations

from collections.abc import Container
from datetime import date, datetime
from typing import Literal

from core.messages import IST
from functions.schedule.errors import ScheduleEventError

Action = Literal["start", "stop"]
Decision = Literal["start", "stop", "skip-holiday", "skip-weekend"]
ACTIONS: tuple[Action, ...] = ("start", "stop")
SATURDAY = 5


def trading_day(now: datetime) -> date:
    """The IST date of an aware datetime."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(IST).date()


def decide(now_ist: datetime, action: Action, holidays: Container[date]) -> Decision:
    if action == "stop":
        return "stop"
    if action != "start":
        raise ScheduleEventError(f"action must be start or stop, got {action!r}")
    day = trading_day(now_ist)
    if day.weekday() >= SATURDAY:
        return "skip-weekend"
    if day in holidays:
        return "skip-holiday"
    return "start"


def parse_action(value: object) -> Action:
    if value == "start":
        return "start"
    if value == "stop":
        return "stop"
    raise ScheduleEventError(f'event "action" must be "start" or "stop", got {value!r:.40}')
