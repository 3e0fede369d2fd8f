"""The v2 feed protocol as the simulator enforces it: pure parsing and validation.

Handshake: `GET /?version=2&token=..&clientId=..&authType=2`. The simulator accepts the
WebSocket and then answers a bad one with a disconnect packet (code 50) and a close, the way
Dhan reports auth problems in-band:
  clientId missing or not the configured one            -> 810 (client id invalid)
  token missing                                          -> 808 (authentication failed)
  token rotated away (renewed, `set_token`) or expired   -> 807 (access token expired)
  any other wrong token                                  -> 809 (access token invalid)
  version or authType missing or not "2"                 -> 814 (invalid request)
The token verdict is a callable (`tokens.TokenAuthority.check` in the feed) so this module
stays free of token state; `check_handshake` keeps the plain "one token + dead set" form.

Requests are JSON text frames. Choices where Dhan does not document its behaviour:
- RequestCode 15/17/21 subscribe and 16/18/22 unsubscribe in ticker/quote/full mode;
  12 asks the server to close. Any other code, invalid JSON, a missing/mismatched
  `InstrumentCount`, or more than 100 instruments in one message -> disconnect 814.
- An instrument whose `ExchangeSegment` is unknown or whose `SecurityId` is not all digits
  (or does not fit the packet's u32) is skipped and the rest of the message applies (Dhan
  reports such ids as 813 without dropping the connection). Ints are accepted as ids too.
- One mode per instrument: subscribing again in another mode switches it; unsubscribing
  removes the instrument whatever mode it was in. Ids are canonical (`"01333"` is `"1333"`).
- Subscriptions beyond 5,000 distinct instruments on one connection -> disconnect 804 and
  nothing of that message is applied. Binary frames from the client are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from core.instruments import MAX_SECURITY_ID, SEGMENT_CODES
from local.dhan_sim.prices import Key

Mode = Literal["ticker", "quote", "full"]
MODES: tuple[Mode, ...] = ("ticker", "quote", "full")

SUBSCRIBE_CODES: dict[int, Mode] = {15: "ticker", 17: "quote", 21: "full"}
UNSUBSCRIBE_CODES: dict[int, Mode] = {16: "ticker", 18: "quote", 22: "full"}
MODE_SUBSCRIBE_CODE: dict[Mode, int] = {m: c for c, m in SUBSCRIBE_CODES.items()}
DISCONNECT_REQUEST = 12

# Disconnect reason codes (DhanHQ annexure).
INTERNAL_ERROR = 800
INSTRUMENT_LIMIT = 804
TOO_MANY_CONNECTIONS = 805
DATA_API_NOT_SUBSCRIBED = 806
TOKEN_EXPIRED = 807
AUTH_FAILED = 808
TOKEN_INVALID = 809
CLIENT_ID_INVALID = 810
INVALID_SECURITY_ID = 813
INVALID_REQUEST = 814

MAX_PER_MESSAGE = 100
MAX_PER_CONNECTION = 5000
MAX_CONNECTIONS = 5


@dataclass(frozen=True)
class Subscribe:
    mode: Mode
    keys: tuple[Key, ...]  # valid instruments, duplicates folded, request order
    skipped: int  # instruments ignored (unknown segment, bad id)


@dataclass(frozen=True)
class Unsubscribe:
    mode: Mode
    keys: tuple[Key, ...]
    skipped: int


@dataclass(frozen=True)
class CloseRequest:
    """RequestCode 12: the client is leaving; the server closes."""


@dataclass(frozen=True)
class Reject:
    """The request breaks the protocol: answer with disconnect `reason` and close."""

    reason: int
    detail: str


Request = Subscribe | Unsubscribe | CloseRequest | Reject


def check_handshake(
    query: Mapping[str, str],
    *,
    client_id: str,
    token: str,
    expired_tokens: frozenset[str] | set[str] = frozenset(),
) -> int | None:
    """The disconnect reason for a handshake's query parameters, or None when it is good."""

    def verdict(given: str) -> int | None:
        if given != token:
            return TOKEN_EXPIRED if given in expired_tokens else TOKEN_INVALID
        return None

    return handshake_reason(query, client_id=client_id, check_token=verdict)


def handshake_reason(
    query: Mapping[str, str], *, client_id: str, check_token: Callable[[str], int | None]
) -> int | None:
    """Like `check_handshake`, with `check_token(token)` judging a present token."""
    if query.get("version") != "2" or query.get("authType") != "2":
        return INVALID_REQUEST
    if query.get("clientId") != client_id:
        return CLIENT_ID_INVALID
    given = query.get("token")
    if not given:
        return AUTH_FAILED
    return check_token(given)


def instrument_key(item: object) -> Key | None:
    """The canonical key of one `InstrumentList` entry, or None when it must be skipped."""
    if not isinstance(item, dict):
        return None
    segment = item.get("ExchangeSegment")
    raw_id = item.get("SecurityId")
    if not isinstance(segment, str) or segment not in SEGMENT_CODES:
        return None
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        number = raw_id
    elif isinstance(raw_id, str) and raw_id.isascii() and raw_id.isdigit():
        number = int(raw_id)
    else:
        return None
    if not 0 <= number <= MAX_SECURITY_ID:
        return None
    return (segment, str(number))


def parse_request(text: str | bytes) -> tuple[object, Request]:
    """The decoded JSON (for the record, None when undecodable) and what it asks for."""
    try:
        message: object = json.loads(text)
    except ValueError:
        return None, Reject(INVALID_REQUEST, "not JSON")
    return message, interpret(message)


def interpret(message: object) -> Request:
    if not isinstance(message, dict):
        return Reject(INVALID_REQUEST, "request must be a JSON object")
    code = message.get("RequestCode")
    if code == DISCONNECT_REQUEST and not isinstance(code, bool):
        return CloseRequest()
    if isinstance(code, bool) or not isinstance(code, int):
        return Reject(INVALID_REQUEST, f"bad RequestCode {code!r}")
    mode = SUBSCRIBE_CODES.get(code) or UNSUBSCRIBE_CODES.get(code)
    if mode is None:
        return Reject(INVALID_REQUEST, f"unsupported RequestCode {code}")
    items = message.get("InstrumentList")
    if not isinstance(items, list):
        return Reject(INVALID_REQUEST, "InstrumentList must be a list")
    count = message.get("InstrumentCount")
    if isinstance(count, bool) or count != len(items):
        return Reject(INVALID_REQUEST, f"InstrumentCount {count!r} != {len(items)} listed")
    if len(items) > MAX_PER_MESSAGE:
        return Reject(INVALID_REQUEST, f"{len(items)} instruments > {MAX_PER_MESSAGE}")
    keys: dict[Key, None] = {}
    skipped = 0
    for item in items:
        key = instrument_key(item)
        if key is None:
            skipped += 1
        else:
            keys[key] = None
    if code in SUBSCRIBE_CODES:
        return Subscribe(mode, tuple(keys), skipped)
    return Unsubscribe(mode, tuple(keys), skipped)


class Subscriptions:
    """One connection's instruments and their modes."""

    def __init__(self, limit: int = MAX_PER_CONNECTION) -> None:
        self.limit = limit
        self.modes: dict[Key, Mode] = {}

    def __len__(self) -> int:
        return len(self.modes)

    def subscribe(self, request: Subscribe) -> Reject | None:
        """Apply a subscribe; a Reject (804) leaves the subscriptions unchanged."""
        new = sum(1 for key in request.keys if key not in self.modes)
        if len(self.modes) + new > self.limit:
            return Reject(INSTRUMENT_LIMIT, f"more than {self.limit} instruments")
        for key in request.keys:
            self.modes[key] = request.mode
        return None

    def unsubscribe(self, request: Unsubscribe) -> None:
        for key in request.keys:
            self.modes.pop(key, None)
