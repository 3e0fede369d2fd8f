"""NSE trading hours in IST (pure): is the market open, and when should the streamer stop.

The silence watchdog only makes sense while the market is open (after the close the feed goes
quiet by design), and the streamer stops itself a grace period after the close. Holidays are the
scheduler's business (it does not start the streamer on them); here a weekday is a trading day.
`always_open` serves the simulator and local runs: the watchdog always applies, no self-stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo

from core.errors import ConfigError
from core.messages import IST


def parse_clock(text: str, *, name: str = "time") -> time:
    """`HH:MM` (24 h) to a time; ConfigError naming the setting otherwise."""
    try:
        hours, minutes = text.strip().split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ConfigError(f"{name} must be HH:MM (24 h), got {text!r}") from None


@dataclass(frozen=True, slots=True)
class MarketHours:
    open: time = time(9, 15)
    close: time = time(15, 30)
    grace: timedelta = timedelta(minutes=10)
    weekdays: frozenset[int] = field(default_factory=lambda: frozenset(range(5)))  # Mon=0
    always_open: bool = False
    tz: tzinfo = IST

    def __post_init__(self) -> None:
        if self.close <= self.open:
            raise ConfigError(f"market close {self.close} must be after open {self.open}")

    def is_open(self, now: datetime) -> bool:
        if self.always_open:
            return True
        local = now.astimezone(self.tz)
        return local.weekday() in self.weekdays and self.open <= local.time() < self.close

    def stop_at(self, now: datetime) -> datetime | None:
        """The first close + grace of a trading day after `now`; None when always open.

        A streamer started in the evening (a local run, a manual start) keeps running through
        the next session instead of stopping at once.
        """
        if self.always_open or not self.weekdays:
            return None
        local = now.astimezone(self.tz)
        day = local.date()
        for _ in range(8):
            if day.weekday() in self.weekdays:
                deadline = datetime.combine(day, self.close, self.tz) + self.grace
                if deadline > local:
                    return deadline
            day += timedelta(days=1)
        return None  # unreachable with at least one weekday
