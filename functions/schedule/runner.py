"""The scheduler's one operation: read the event, decide, start or stop, report.

Event (from EventBridge Scheduler, see infra/schedule.py):
  {"action": "start" | "stop", "scheduledTime": "2026-01-05T03:30:00Z"}
`scheduledTime` (the planned time, stable across Scheduler's retries) picks the trading day;
without it (a manual invocation) the current time does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from functions.schedule.control import StreamControl
from functions.schedule.decision import decide, parse_action, trading_day
from functions.schedule.errors import ScheduleEventError
from functions.schedule.nse_calendar import HolidayCalendar

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_scheduled_time(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ScheduleEventError(f'"scheduledTime" must be an ISO 8601 string, got {value!r:.40}')
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ScheduleEventError(f'"scheduledTime" is not ISO 8601: {value!r:.40}') from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class MarketHoursScheduler:
    def __init__(
        self,
        *,
        control: StreamControl,
        calendar: HolidayCalendar,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._control = control
        self._calendar = calendar
        self._clock = clock

    def run(self, event: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(event, Mapping):
            raise ScheduleEventError("event must be a JSON object")
        action = parse_action(event.get("action"))
        when = parse_scheduled_time(event.get("scheduledTime")) or self._clock()
        day = trading_day(when)
        if not self._calendar.covers(day):
            log.warning(
                "NSE holiday calendar covers %d-%d, not %s: only weekends are skipped; "
                "regenerate it with scripts/gen_nse_holidays.py",
                self._calendar.first_year, self._calendar.last_year, day.isoformat(),
            )
        decision = decide(when, action, self._calendar)
        outcome: dict[str, Any] = {"action": action, "decision": decision, "day": day.isoformat()}
        if decision == "start":
            outcome["result"] = self._control.start()
        elif decision == "stop":
            outcome["result"] = self._control.stop()
        log.info("market-hours %s on %s: %s", action, outcome["day"], decision,
                 extra={"schedule": outcome})  # fmt: skip
        return outcome
