"""When to renew the DhanHQ token (pure).

Renewing makes Dhan kill the old token at once, and with it every feed socket that used it
(807/809): the streamer reconnects with the new one, but that is a gap in ticks. So a renewal
waits for the quiet hours (outside `quiet_start`-`quiet_end` IST on weekdays, which holds the
pre-open, the session and the post-close) unless the token is about to run out:

  expired (seconds left <= 0)                       -> "expired"  (cannot be renewed: alarm)
  less than `urgent_below` left                     -> "renew"    (any time: a gap beats an
                                                                   expiry mid-session)
  less than `renew_below` left, in the quiet hours  -> "renew"
  expiry unknown (not a JWT), in the quiet hours    -> "renew"    (the new one is a JWT)
  otherwise                                         -> "skip"

With the defaults (renew below 16 h, urgent below 4 h, quiet 16:15-08:45) and a run every 30
minutes, renewals fall after the close, around midnight and before the open (three a day, each
a switch of sockets of a few tens of ms), never in the session: the last quiet run before the
session leaves the token at least 16 h, so it never drops below 8 h during the session, above
both the urgent mark and the 6 h alarm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import Literal

from core.messages import IST

Decision = Literal["renew", "skip", "expired"]
SATURDAY = 5


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    renew_below: float = 16 * 3600.0
    urgent_below: float = 4 * 3600.0
    quiet_start: time = time(16, 15)  # IST: the session's renewals wait until after this
    quiet_end: time = time(8, 45)  # IST: ... and must be done before this

    def __post_init__(self) -> None:
        if not 0 < self.urgent_below < self.renew_below < 86400:
            raise ValueError("need 0 < urgent_below < renew_below < 86400 seconds")

    def in_session_hours(self, now: datetime) -> bool:
        local = now.astimezone(IST)
        if local.weekday() >= SATURDAY:
            return False
        return self.quiet_end <= local.time() < self.quiet_start

    def decide(self, seconds_left: float | None, now: datetime) -> Decision:
        if seconds_left is not None and seconds_left <= 0:
            return "expired"
        if seconds_left is not None and seconds_left < self.urgent_below:
            return "renew"
        if self.in_session_hours(now):
            return "skip"
        if seconds_left is None or seconds_left < self.renew_below:
            return "renew"
        return "skip"
