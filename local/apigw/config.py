"""What a `LocalApiGateway` is given: the Lambda handlers behind its routes, its settings, and
the injectable throttle.

Kept apart from the gateway so callers that only build these (the local stack, the fan-out
tests and benchmarks) read them without the server code, and so the limits API Gateway
enforces are named in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[dict[str, Any], Any], Any]

MAX_MESSAGE_BYTES = 128 * 1024


@dataclass(frozen=True, slots=True)
class Handlers:
    """The Lambda functions behind the routes (None: route not configured)."""

    message: Handler
    connect: Handler | None = None
    disconnect: Handler | None = None
    authorizer: Handler | None = None
    routes: frozenset[str] = frozenset({"subscribe", "unsubscribe", "ping"})
    route_handlers: Mapping[str, Handler] = field(default_factory=dict)

    def for_route(self, route_key: str) -> Handler:
        return self.route_handlers.get(route_key, self.message)


@dataclass(slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    ws_port: int = 0
    http_port: int = 0
    stage: str = "local"
    api_id: str = "localapi"
    idle_timeout: float = 600.0
    max_duration: float = 7200.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    post_latency: float = 0.0  # added to every @connections request (API Gateway's ~10 ms)


class Throttle:
    """Injectable 429s: the next `n` posts, and/or a sustained rate (token bucket)."""

    def __init__(self) -> None:
        self._next = 0
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()

    def fail_next(self, n: int) -> None:
        self._next = n

    def limit_rate(self, per_second: float | None, burst: float | None = None) -> None:
        self._rate = per_second
        self._tokens = burst if burst is not None else (per_second or 0.0)
        self._burst = self._tokens
        self._stamp = time.monotonic()

    def admit(self) -> bool:
        if self._next > 0:
            self._next -= 1
            return False
        if self._rate is None:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
