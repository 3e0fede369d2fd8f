"""What to do when a feed connection fails: one pure function, one table.

failure                                        action         why
disconnect 806 / 810                           STOP           no data plan, bad client id: only an
                                                              operator helps
disconnect 808 / 809 (auth failed, bad token)  RECHECK        re-read the token once: a token
                                                              minted elsewhere (or renewed) kills
                                                              the old one; reconnect if it changed,
                                                              else STOP
disconnect 807 (token expired)                 REAUTH         re-read the token (env / secret)
handshake HTTP 401 / 403                       REAUTH         the token may have been rotated
disconnect 805, handshake HTTP 429             BACKOFF_LONG   too many connections or requests
other disconnect codes, handshake 5xx/4xx,     RETRY          transient: reconnect with backoff
closed socket, silence while open, network
bad feed URL                                   STOP           configuration: fix and restart
closed by us for a renewed token               RECONNECT      at once, with the new token (no
                                                              backoff: this is no failure)

Reason texts follow DhanHQ's annexure (808 authentication failed, 809 token invalid; the SDK
prints those two the other way round).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    STOP = "stop"
    REAUTH = "reauth"
    RECHECK = "recheck"  # re-read the token; STOP unless it changed
    BACKOFF_LONG = "backoff_long"
    RETRY = "retry"
    RECONNECT = "reconnect"  # at once: we closed it ourselves to switch tokens


class Kind(enum.Enum):
    DISCONNECT = "disconnect"  # a code-50 packet with a reason code
    HANDSHAKE = "handshake"  # the HTTP upgrade was refused with a status
    CLOSED = "closed"  # the socket closed (either side) without a reason packet
    SILENCE = "silence"  # no data for the silence timeout while the market is open
    NETWORK = "network"  # DNS, TCP, TLS, timeouts
    CONFIG = "config"  # the feed URL itself is unusable
    SWITCH = "switch"  # closed by us to reconnect with a renewed token
    OTHER = "other"  # anything else we did not foresee


REASONS: dict[int, str] = {
    800: "internal server error",
    804: "instruments exceed the limit",
    805: "too many requests or connections",
    806: "data APIs not subscribed",
    807: "access token expired",
    808: "authentication failed",
    809: "access token invalid",
    810: "client id invalid",
    811: "invalid expiry date",
    812: "invalid date format",
    813: "invalid SecurityId",
    814: "invalid request",
}

FATAL_CODES = frozenset({806, 810})
RECHECK_CODES = frozenset({808, 809})
REAUTH_CODES = frozenset({807})
SLOW_DOWN_CODES = frozenset({805})
REAUTH_STATUSES = frozenset({401, 403})
SLOW_DOWN_STATUSES = frozenset({429})


@dataclass(frozen=True, slots=True)
class Failure:
    kind: Kind
    code: int | None = None  # disconnect reason code, or HTTP status for HANDSHAKE
    detail: str = ""

    def describe(self) -> str:
        if self.kind is Kind.DISCONNECT:
            reason = REASONS.get(self.code or 0, "unknown reason")
            text = f"feed disconnect {self.code} ({reason})"
        elif self.kind is Kind.HANDSHAKE:
            text = f"handshake refused with HTTP {self.code}"
        else:
            text = self.kind.value
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    failure: Failure

    @property
    def message(self) -> str:
        return f"{self.failure.describe()} -> {self.action.value}"


def classify(failure: Failure) -> Verdict:
    """Decide whether a failed connection stops, re-authenticates, or retries (and how fast)."""
    code = failure.code
    if failure.kind is Kind.DISCONNECT:
        if code in FATAL_CODES:
            action = Action.STOP
        elif code in RECHECK_CODES:
            action = Action.RECHECK
        elif code in REAUTH_CODES:
            action = Action.REAUTH
        elif code in SLOW_DOWN_CODES:
            action = Action.BACKOFF_LONG
        else:
            action = Action.RETRY
    elif failure.kind is Kind.HANDSHAKE:
        if code in REAUTH_STATUSES:
            action = Action.REAUTH
        elif code in SLOW_DOWN_STATUSES:
            action = Action.BACKOFF_LONG
        else:
            action = Action.RETRY
    elif failure.kind is Kind.CONFIG:
        action = Action.STOP
    elif failure.kind is Kind.SWITCH:
        action = Action.RECONNECT
    else:
        action = Action.RETRY
    return Verdict(action, failure)
