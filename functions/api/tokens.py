"""Who may get a WebSocket connect token, and how often: `GET /api/v1/ws_token`.

Two identity modes (README "Who may connect"):

- (a) OIDC: an HTTP API JWT authorizer guards the route; the token's `sub` is the JWT's
  subject (`requestContext.authorizer.jwt.claims.sub`) and the limit counts per subject.
- (b) public: anyone may ask; the token's `sub` is `ip:<address>` (`browser` when no address
  is known, e.g. under plain uvicorn) and the limit counts per address.

Either way the token is bound to the address it was minted for (`requestContext.http.sourceIp`,
which API Gateway takes from the connection; `X-Forwarded-For` is the client's to write and
is never read here).

The limit is a fixed one-minute window per requester in Redis. Key family, owned here:
  ws_token:limit:{requester}:{window}   counter (INCR), EX two windows; `window` is
                                        floor(epoch seconds / 60), so a key is never reused
One pipeline (INCR + EXPIRE) per request and no script: the window is in the key name, so a
repeated EXPIRE only extends a key that stops counting at the window's end anyway. A fixed
window lets a requester take up to twice the limit across a window boundary; the HTTP API's
route throttle (infra/http_api.py) bounds bursts of the route as a whole.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from functions.errors import ApiError

WINDOW_SECONDS = 60
LIMIT_PREFIX = "ws_token:limit:"
# Longer subjects (OIDC allows 255 characters of anything) are hashed into the key.
MAX_KEY_PART = 100
IPV6_PREFIX = 64  # one subscriber's allocation: a caller cannot be 2**64 callers
UNKNOWN_REQUESTER = "unknown"  # `counted_as` of a request with neither a subject nor an address


class SignInRequired(ApiError):
    """Identity mode (a) and no JWT subject reached the function: the route is not behind the
    authorizer it should be. Refused rather than minted as for an anonymous address."""

    status = 401
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("sign in first: this route needs 'Authorization: Bearer <OIDC token>'",
                         headers={"WWW-Authenticate": "Bearer"})


class TooManyTokenRequests(ApiError):
    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)},
                         details={"retry_after": retry_after})  # fmt: skip
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks for a token: `subject` goes into the token, `source_ip` binds it, `counted_as`
    is whose allowance it takes."""

    subject: str
    source_ip: str | None
    counted_as: str


def requester(event: Mapping[str, Any] | None, *, client_host: str | None = None,
              require_subject: bool = False) -> Requester:
    """The requester of an HTTP API (payload 2.0) event; `client_host` stands in for the
    event's source address when there is no event (the app served without Mangum). With
    `require_subject` (WS_TOKEN_IDENTITY=oidc) a request without a JWT subject is refused."""
    context = _mapping(_mapping(event).get("requestContext"))
    address = _mapping(context.get("http")).get("sourceIp") or client_host
    source_ip = str(address).strip() if address else None
    claims = _mapping(_mapping(_mapping(context.get("authorizer")).get("jwt")).get("claims"))
    subject = claims.get("sub")
    if isinstance(subject, str) and subject.strip():
        return Requester(subject=subject, source_ip=source_ip, counted_as=f"sub:{subject}")
    if require_subject:
        raise SignInRequired()
    if source_ip:
        return Requester(subject=f"ip:{source_ip}", source_ip=source_ip,
                         counted_as=f"ip:{counted_address(source_ip)}")  # fmt: skip
    return Requester(subject="browser", source_ip=None, counted_as=UNKNOWN_REQUESTER)


def counted_address(source_ip: str) -> str:
    """An address as one requester: an IPv6 address by its /64, anything else as it is."""
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return source_ip
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def limit_key(counted_as: str, window: int) -> str:
    part = counted_as
    if len(part) > MAX_KEY_PART:
        part = "h:" + hashlib.sha256(part.encode()).hexdigest()
    return f"{LIMIT_PREFIX}{part}:{window}"


def window_at(now: float, seconds: int = WINDOW_SECONDS) -> tuple[int, int]:
    """(the window `now` falls in, whole seconds until the next one starts, >= 1)."""
    window = int(now // seconds)
    left = (window + 1) * seconds - now
    return window, max(1, math.ceil(left))


class CounterRedis(Protocol):
    def pipeline(self, transaction: bool = True) -> Any: ...


def take_token(redis: CounterRedis, who: Requester, *, per_minute: int, now: float) -> None:
    """Count one token for `who` in this minute's window; TooManyTokenRequests (429, with
    Retry-After: the seconds to the next window) past `per_minute`. 0 means no limit."""
    if per_minute <= 0:
        return
    window, retry_after = window_at(now)
    key = limit_key(who.counted_as, window)
    pipe = redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 2 * WINDOW_SECONDS)
    count, _ = pipe.execute()
    if int(count) > per_minute:
        raise TooManyTokenRequests(
            f"at most {per_minute} connect tokens a minute per "
            f"{'user' if who.counted_as.startswith('sub:') else 'address'}; "
            f"retry in {retry_after} s",
            retry_after=retry_after,
        )
