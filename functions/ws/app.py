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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from core.messages import dumps
from functions.errors import Unauthorized
from functions.ws.management import ManagementApi, PostOutcome, post
from functions.ws.protocol import (
    ClientAction,
    ProtocolError,
    error_message,
    not_carried_message,
    parse_client_message,
    pong_message,
    reconnect_message,
    snapshot_message,
    subscribed_message,
)
from functions.wsauth import TokenError, verify_token
from realtime import snapshot
from realtime.registry import ConnectionRegistry

log = logging.getLogger(__name__)

Event = Mapping[str, Any]
OK = {"statusCode": 200}


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
    ) -> None:
        self._registry = registry
        self._redis = redis
        self._management = management
        self._token_secret = token_secret
        self._max_message_bytes = max_message_bytes

    @property
    def registry(self) -> ConnectionRegistry:
        return self._registry

    # --- routes -----------------------------------------------------------------------------

    def authorize(self, event: Event) -> dict[str, Any]:
        resource = str(event.get("methodArn", "*"))
        secret = self._token_secret()
        if not secret:
            return policy("Allow", resource, "anonymous", {"subject": "anonymous"})
        query = event.get("queryStringParameters") or {}
        token = query.get("token") if isinstance(query, Mapping) else None
        if not token:
            # API Gateway answers 401 only to an authorizer error whose message is exactly this.
            raise Unauthorized("Unauthorized")
        try:
            claims = verify_token(str(token), secret)
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
        self._registry.connect(
            str(context["connectionId"]), meta=meta,
            connected_at=int(connected_ms) / 1000 if connected_ms else None,
        )
        return OK

    def disconnect(self, event: Event) -> dict[str, Any]:
        self._registry.remove(str(_context(event)["connectionId"]))
        return OK

    def message(self, event: Event) -> dict[str, Any]:
        connection_id = str(_context(event)["connectionId"])
        body = event.get("body")
        if event.get("isBase64Encoded"):
            replies = [error_message("binary messages are not supported; send JSON text")]
        else:
            try:
                action = parse_client_message(body, max_bytes=self._max_message_bytes,
                                              max_keys=self._registry.max_keys)
            except ProtocolError as exc:
                replies = [error_message(exc.reason, details=exc.details)]
            else:
                replies = self._apply(connection_id, action)
        for reply in replies:
            if not self._send(event, connection_id, reply):
                break
        return OK

    # --- actions ----------------------------------------------------------------------------

    def _apply(self, connection_id: str, action: ClientAction) -> list[dict[str, Any]]:
        rid = action.request_id
        if action.action == "ping":
            if not self._registry.known(connection_id):
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
            return [error_message(result.reason, request_id=rid)]
        replies = []
        refused = set(result.refused)
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
        return replies

    def _send(self, event: Event, connection_id: str, message: dict[str, Any]) -> bool:
        """Post one reply; False when the connection is gone (nothing more to send it)."""
        outcome = post(self._management(event), connection_id, dumps(message))
        if outcome is PostOutcome.GONE:
            self._registry.remove(connection_id)
            return False
        if outcome is not PostOutcome.SENT:
            log.warning("reply to %s not delivered: %s", connection_id, outcome.value)
        return True
