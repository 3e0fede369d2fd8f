"""Errors of the market-hours scheduler.

FunctionsError (functions.errors)
 +-- ScheduleError
      +-- CalendarError        the shipped holiday calendar is missing or malformed
      +-- ScheduleEventError   the invocation's event is not {"action": "start"|"stop", ...}

Errors of the start/stop itself (ScalingError, RegistryBusy from `functions.streams`) are not
caught: the invocation fails, EventBridge Scheduler retries it and the alarm fires.
"""

from __future__ import annotations

from functions.errors import FunctionsError


class ScheduleError(FunctionsError):
    """Base of the scheduler's own errors."""


class CalendarError(ScheduleError):
    """The holiday calendar cannot be read or makes no sense."""


class ScheduleEventError(ScheduleError, ValueError):
    """The event does not say what to do."""
