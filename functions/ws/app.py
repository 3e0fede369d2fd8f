"""The WebSocket route handlers: `$connect` authorizer, `$connect`, `$disconnect`, messages.

`WsApp` holds its clients (passed in) and turns API Gateway events into registry changes and
replies posted through `@connections`. The module-level entries in `functions.ws` build one
`WsApp` per Lambda container from the environment.

Snapshot without a gap: `subscribe` records the keys in the registry FIRST and only then reads
the prices. The bridge, at the end of every window, writes the window's newest values to
`ws:latest` and only then reads which keys are subscribed. So a tick either reached
`ws:latest` (or `ltp:*`) before the snapshot read, or its window reads the subscriptions after
the keys were recorded and the fan-out delivers it. Snapshot versions then become the keys'
floors, so the stream never sends this connection anything older than its snapshot.

Admission (API Gateway WebSocket APIs have no WAF: limiting abuse is this code's job), each
decision made in Redis inside the script that records, so every Lambda container agrees:
- `$connect` is refused with 429 when its source address already holds its cap of live
  connections and with 503 when the registry holds its cap in all (API Gateway refuses the
  upgrade for a non-2xx answer); a refused connection leaves nothing in Redis.
- every message first takes a token of its connection's bucket: the first one over the rate is
  answered `rate_limited` (one paid post), the rest of its penalty window are dropped
  unanswered, and a connection still over the rate after `strikes` windows is closed with
  DeleteConnection and removed. A page (a subscribe per watchlist change, a ping every few
  seconds at most) never comes near the default 5 per second with bursts of 20.
- `subscribe` refuses, with an `error` naming them, keys the loaded instrument master lacks
  and keys over the connection's cap, and records nothing for them.
The defaults of this class limit nothing (tests and benchmarks open many connections from one
address); `functions.ws.wiring` passes the deployment's limits from its settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from core.messages import dumps
from functions.errors import Unauthorized
from functions.ws.management import ManagementApi, PostOutcome, delete, post
from functions.ws.protocol import (
    ClientAction,
    ProtocolError,
    error_message,
    not_carried_message,
    parse_client_message,
    pong_message,
    rate_limited_message,
    reconnect_message,
    snapshot_message,
    subscribed_message,
    too_many_keys_message,
    unknown_instrument_message,
)
from functions.wsauth import TokenError, verify_token
from realtime import snapshot
from realtime.registry import (
    NO_LIMITS,
    ConnectionLimits,
    ConnectionRegistry,
    MessageRate,
    Refusal,
    Verdict,
)

log = logging.getLogger(__name__)

Event = Mapping[str, Any]
OK = {"statusCode": 200}
# What `$connect` answers when a cap refuses it: the client's own doing, or the service's.
REFUSED = {Refusal.SOURCE_IP: {"statusCode": 429}, Refusal.FULL: {"statusCode": 503},
           Refusal.COOLING_OFF: {"statusCode": 429}}


class SnapshotRedis(Protocol):
    def pipeline(self, transaction: bool = True) -> Any: ...


def _context(event: Event) -> Mapping[str, Any]:
    context = event.get("requestContext")
    if not isinstance(context, Mapping) or not context.get("connectionId"):
        raise ValueError("not an API Gateway WebSocket event (no requestContext.connectionId)")
    return context


def policy(effect: str, resource: str, principal: str, context: dict[str, Any]) -> dict[str, Any]:
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect,
                           "Resource": resource}],
        },
        "context": context,
    }


class WsApp:
    def __init__(
        self,
        *,
        registry: ConnectionRegistry,
        redis: SnapshotRedis,
        management: Callable[[Event], ManagementApi],
        token_secret: Callable[[], str],
        max_message_bytes: int = 64 * 1024,
        connection_limits: ConnectionLimits = NO_LIMITS,
        message_rate: MessageRate | None = None,
        cool_off_seconds: int = 0,
    ) -> None:
        """`cool_off_seconds`: how long the address of a connection cut for its message rate
        may not connect (0: it may reconnect at once)."""
        self._registry = registry
        self._redis = redis
        self._management = management
        self._token_secret = token_secret
        self._max_message_bytes = max_message_bytes
        self._limits = connection_limits
        self._rate = message_rate
        self._cool_off_seconds = cool_off_seconds

    @property
    def registry(self) -> ConnectionRegistry:
        return self._registry

    # --- routes -----------------------------------------------------------------------------

    def authorize(self, event: Event) -> dict[str, Any]:
        resource = str(event.get("methodArn", "*"))
        # A configured but blank or unreadable secret raises here (SecretError): the connect
        # fails (API Gateway 500), it is never let in without a token.
        secret = self._token_secret()
        if not secret:
            return policy("Allow", resource, "anonymous", {"subject": "anonymous"})
        query = event.get("queryStringParameters") or {}
        token = query.get("token") if isinstance(query, Mapping) else None
        if not token:
            # API Gateway answers 401 only to an authorizer error whose message is exactly this.
            raise Unauthorized("Unauthorized")
        context = event.get("requestContext")
        identity = context.get("identity") if isinstance(context, Mapping) else None
        source_ip = identity.get("sourceIp") if isinstance(identity, Mapping) else None
        try:
            claims = verify_token(str(token), secret,
                                  source_ip=str(source_ip) if source_ip else None)
        except TokenError as exc:
            log.info("websocket connect refused: %s", exc.reason)
            return policy("Deny", resource, "invalid", {"reason": exc.reason})
        return policy("Allow", resource, claims.subject,
                      {"subject": claims.subject, "expires_at": claims.expires_at})

    def connect(self, event: Event) -> dict[str, Any]:
        context = _context(event)
        identity = context.get("identity") or {}
        authorizer = context.get("authorizer") or {}
        connected_ms = context.get("connectedAt")
        meta: dict[str, str | int] = {
            "connected_at": int(connected_ms) if connected_ms else 0,
            "source_ip": str(identity.get("sourceIp", "")),
            "subject": str(authorizer.get("subject", authorizer.get("principalId", ""))),
        }
        connected = self._registry.connect(
            str(context["connectionId"]), meta=meta,
            connected_at=int(connected_ms) / 1000 if connected_ms else None,
            limits=self._limits,
        )
        if connected.refused is not None:
            # A full registry is the operator's concern; one address's flood is routine.
            level = logging.WARNING if connected.refused is Refusal.FULL else logging.INFO
            log.log(level, "websocket connect from %s refused: %s", meta["source_ip"],
                    connected.refused.value)
            return dict(REFUSED[connected.refused])
        return OK

    def disconnect(self, event: Event) -> dict[str, Any]:
        self._registry.remove(str(_context(event)["connectionId"]))
        return OK

    def message(self, event: Event) -> dict[str, Any]:
        connection_id = str(_context(event)["connectionId"])
        known: bool | None = None  # not asked yet
        if self._rate is not None:
            admission = self._registry.admit_message(connection_id, self._rate)
            if admission.verdict is Verdict.DROP:
                return OK
            if admission.verdict is Verdict.DISCONNECT:
                self._close(event, connection_id)
                return OK
            if admission.verdict is Verdict.LIMITED:
                log.info("websocket %s over its message rate", connection_id)
                self._send(event, connection_id, rate_limited_message(
                    admission.retry_after_ms, per_second=self._rate.per_second,
                    burst=self._rate.burst))
                return OK
            known = admission.verdict is not Verdict.UNKNOWN
        for reply in self._replies(connection_id, event, known):
            if not self._send(event, connection_id, reply):
                break
        return OK

    # --- actions ----------------------------------------------------------------------------

    def _replies(self, connection_id: str, event: Event,
                 known: bool | None) -> list[dict[str, Any]]:
        if event.get("isBase64Encoded"):
            return [error_message("binary messages are not supported; send JSON text")]
        try:
            action = parse_client_message(event.get("body"), max_bytes=self._max_message_bytes,
                                          max_keys=self._registry.max_keys)
        except ProtocolError as exc:
            return [error_message(exc.reason, details=exc.details)]
        return self._apply(connection_id, action, known=known)

    def _apply(self, connection_id: str, action: ClientAction, *,
               known: bool | None = None) -> list[dict[str, Any]]:
        rid = action.request_id
        if action.action == "ping":
            if not (self._registry.known(connection_id) if known is None else known):
                return [reconnect_message(request_id=rid)]
            return [pong_message(request_id=rid)]
        if action.action == "unsubscribe":
            removed = self._registry.unsubscribe(connection_id, action.keys)
            total = len(self._registry.keys(connection_id))
            return [subscribed_message("unsubscribe", removed, total, request_id=rid)]
        result = self._registry.subscribe(connection_id, action.keys)
        if result.unknown_connection:
            return [reconnect_message(request_id=rid)]
        if not result.ok:
            return [too_many_keys_message(result.reason, request_id=rid)]
        replies = []
        refused = {*result.refused, *result.unknown}
        wanted = [key for key in action.keys if key not in refused]
        if wanted:
            # The keys are recorded; only now is it safe to read what they cost.
            prices, missing = snapshot.snapshot_prices(snapshot.read(self._redis, wanted))
            versions = {k: int(p["version"]) for k, p in prices.items()
                        if isinstance(p.get("version"), int)}
            self._registry.mark_snapshot(connection_id, versions)
            replies.append(snapshot_message(prices, missing, request_id=rid))
        if result.refused:
            replies.append(not_carried_message(result.refused, request_id=rid))
        if result.unknown:
            replies.append(unknown_instrument_message(result.unknown, request_id=rid))
        return replies

    def _close(self, event: Event, connection_id: str) -> None:
        """Disconnect a connection that stayed over its message rate, and forget it (its
        `$disconnect` then finds nothing left to remove)."""
        address = self._registry.cool_off(connection_id, self._cool_off_seconds)
        outcome = delete(self._management(event), connection_id)
        log.warning("websocket %s disconnected for staying over its message rate (%s); %s "
                    "may not connect for %d s", connection_id, outcome.value,
                    address or "its address", self._cool_off_seconds)
        self._registry.remove(connection_id)

    def _send(self, event: Event, connection_id: str, message: dict[str, Any]) -> bool:
        """Post one reply; False when the connection is gone (nothing more to send it)."""
        outcome = post(self._management(event), connection_id, dumps(message))
        if outcome is PostOutcome.GONE:
            self._registry.remove(connection_id)
            return False
        if outcome is not PostOutcome.SENT:
            log.warning("reply to %s not delivered: %s", connection_id, outcome.value)
        return True
