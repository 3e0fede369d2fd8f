"""A local API Gateway WebSocket API: the same Lambda handlers, a real `@connections` endpoint.

- WebSocket side (python-websockets, this module): assigns connection ids, runs the `$connect`
  authorizer and handler during the handshake (a Deny answers 403, an authorizer exception 401,
  a non-2xx `$connect` its own status), selects routes on `$request.body.action`, runs every
  handler (sync, in a worker thread) with API Gateway-shaped events, and runs `$disconnect` on
  close. Routes have no route response: a handler's return value is never sent to the client (a
  failing one gets API Gateway's `{"message": "Internal server error", ...}`).
  Enforces the 128 KB message limit (larger closes with 1009), the idle timeout (10 min) and
  the maximum duration (2 h), both configurable.
- HTTP side (`connections_http`, a plain ASGI app on uvicorn): `POST|GET|DELETE
  /{stage}/@connections/{id}`, answering like AWS (410 GoneException, 413
  PayloadTooLargeException, 429 LimitExceededException with `x-amzn-ErrorType`) so boto3's
  `apigatewaymanagementapi` raises the same exceptions with `endpoint_url=gateway.callback_url`.
  SigV4 is not checked. Throttling and added latency can be injected for tests and benchmarks.
  DELETE (DeleteConnection) answers as soon as the close has started, as AWS does, and no
  message of the connection reaches a route after it: waiting for the closing handshake
  instead deadlocked a route handler that closed its own client while the client's unread
  messages held the socket's reading paused.

What a post must pass and how its frame is written live in `posting`; the handlers, settings
and throttle in `config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import uvicorn
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.http11 import Response as WsResponse

from local.apigw import events
from local.apigw.config import MAX_MESSAGE_BYTES, GatewayConfig, Handler, Handlers, Throttle
from local.apigw.connections_http import ConnectionsEndpoint
from local.apigw.events import ConnectionInfo
from local.apigw.posting import (
    MAX_CLIENT_BUFFER_BYTES,
    NO_FRAME,
    THROTTLED,
    Frame,
    OpenConnection,
    PostResult,
    judge,
    write_frame,
)

log = logging.getLogger(__name__)


def new_connection_id() -> str:
    # AWS ids are 12 base64 characters, often ending in "="; keep the awkward "=" for realism.
    return secrets.token_urlsafe(8)[:11] + "="


class LocalApiGateway:
    def __init__(self, handlers: Handlers, config: GatewayConfig | None = None) -> None:
        self.handlers = handlers
        self.config = config or GatewayConfig()
        self.throttle = Throttle()
        self.connections: dict[str, OpenConnection] = {}
        self.posts = 0
        # Posts arrive from fan-out threads as well as the loop (throttle, counter, outbox).
        self._post_lock = threading.Lock()
        self._outbox: list[tuple[OpenConnection, Frame]] = []
        self._outbox_scheduled = False
        self._handshakes: dict[int, ConnectionInfo] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._ws_server: Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> LocalApiGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        self._ws_server = await serve(
            self._serve_connection, cfg.host, cfg.ws_port,
            process_request=self._handshake,
            max_size=cfg.max_message_bytes,
            ping_interval=None,  # API Gateway does not ping clients
            compression=None,
            server_header="local-apigw",
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.http_port))
        self._http_socket = sock
        server = uvicorn.Server(uvicorn.Config(ConnectionsEndpoint(self), interface="asgi3",
                                               log_level="warning",
                                               lifespan="off", access_log=False,
                                               timeout_keep_alive=30))
        self._http = server
        self._http_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for conn in list(self.connections.values()):
            with contextlib.suppress(Exception):
                await conn.socket.close(1001, "Going away")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        if self._http_socket is not None:
            self._http_socket.close()

    @property
    def ws_port(self) -> int:
        assert self._ws_server is not None
        port: int = next(iter(self._ws_server.sockets)).getsockname()[1]
        return port

    @property
    def http_port(self) -> int:
        assert self._http_socket is not None
        port: int = self._http_socket.getsockname()[1]
        return port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.ws_port}/{self.config.stage}"

    @property
    def callback_url(self) -> str:
        """What WEBSOCKET_CALLBACK_URL / boto3's endpoint_url should be."""
        return f"http://{self.config.host}:{self.http_port}/{self.config.stage}"

    # --- WebSocket side -----------------------------------------------------------------------

    async def _call(self, handler: Handler, event: dict[str, Any]) -> Any:
        return await asyncio.to_thread(handler, event, None)

    async def _handshake(self, connection: ServerConnection, request: Request) -> WsResponse | None:
        cfg = self.config
        url = urlsplit(request.path)
        if url.path.strip("/") != cfg.stage:
            return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
        remote = connection.remote_address
        info = ConnectionInfo(
            connection_id=new_connection_id(),
            api_id=cfg.api_id,
            stage=cfg.stage,
            domain_name=f"{cfg.host}:{self.ws_port}",
            connected_at_ms=int(time.time() * 1000),
            source_ip=str(remote[0]) if remote else "127.0.0.1",
            user_agent=request.headers.get("User-Agent", ""),
            headers=_plain_headers(request.headers),
            query=dict(parse_qsl(url.query)),
        )
        if self.handlers.authorizer is not None:
            try:
                answer = await self._call(self.handlers.authorizer, events.authorizer_event(info))
            except Exception:  # noqa: BLE001 - an authorizer failure is API Gateway's 401
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            if not _allows(answer):
                return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
            context = dict(answer.get("context") or {})
            context["principalId"] = answer.get("principalId", "")
            info = _with_authorizer(info, context)
        if self.handlers.connect is not None:
            try:
                reply = await self._call(self.handlers.connect, events.connect_event(info))
            except Exception:
                log.exception("$connect handler failed")
                return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                                          "Internal server error\n")
            status = int(reply.get("statusCode", 200)) if isinstance(reply, Mapping) else 200
            if not 200 <= status < 300:
                return connection.respond(http.HTTPStatus(status), "Connection refused\n")
        self._handshakes[id(connection)] = info
        return None

    async def _serve_connection(self, socket_: ServerConnection) -> None:
        info = self._handshakes.pop(id(socket_))
        now = time.monotonic()
        conn = OpenConnection(info, socket_, now, now)
        self.connections[info.connection_id] = conn
        conn.watchdog = asyncio.create_task(self._watch(conn))
        try:
            async for data in socket_:
                if conn.deleted:
                    continue  # DeleteConnection: AWS invokes no route after it
                conn.last_active = time.monotonic()
                route = events.select_route(data, self.handlers.routes)
                event = events.message_event(info, route, data)
                try:
                    # No route has a route response (as in infra/websocket_api.py), so what
                    # the handler returns never reaches the client: replies go through
                    # @connections.
                    await self._call(self.handlers.for_route(route), event)
                except Exception:
                    log.exception("route %s failed for %s", route, info.connection_id)
                    # What API Gateway itself sends the client when the integration fails.
                    request_id = event["requestContext"]["requestId"]
                    failure = ('{"message": "Internal server error", '
                               f'"connectionId":"{info.connection_id}", '
                               f'"requestId":"{request_id}"}}')
                    with contextlib.suppress(ConnectionClosed):
                        await socket_.send(failure)
        except ConnectionClosed:
            pass
        finally:
            self.connections.pop(info.connection_id, None)
            conn.watchdog.cancel()
            code = socket_.close_code if socket_.close_code is not None else 1006
            reason = socket_.close_reason or ""
            if self.handlers.disconnect is not None:
                try:
                    await self._call(self.handlers.disconnect, events.disconnect_event(
                        info, status_code=code, reason=reason))
                except Exception:
                    log.exception("$disconnect handler failed for %s", info.connection_id)

    async def _watch(self, conn: OpenConnection) -> None:
        cfg = self.config
        while True:
            now = time.monotonic()
            idle_end = conn.last_active + cfg.idle_timeout
            max_end = conn.connected_at + cfg.max_duration
            if now >= max_end or now >= idle_end:
                await conn.socket.close(1001, "Going away")
                return
            await asyncio.sleep(min(idle_end, max_end) - now)

    # --- @connections -------------------------------------------------------------------------

    def delete(self, connection_id: str) -> bool:
        """DeleteConnection (on the gateway's loop): starts the close and returns at once;
        False when there is no such connection."""
        conn = self.connections.get(connection_id)
        if conn is None:
            return False
        conn.deleted = True
        task = asyncio.ensure_future(conn.socket.close(1000, ""))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return True

    def _accept(self, connection_id: str, data: bytes
                ) -> tuple[PostResult, OpenConnection | None, Frame]:
        """The checks API Gateway makes before it takes a message (caller holds `_post_lock`)."""
        if not self.throttle.admit():
            return THROTTLED, None, NO_FRAME
        return judge(self.connections.get(connection_id), data,
                     max_message_bytes=self.config.max_message_bytes)

    async def post(self, connection_id: str, data: bytes) -> PostResult:
        """PostToConnection, as the HTTP endpoint performs it (on the loop, so it writes the
        frame at once; the in-process fan-out uses `post_nowait`)."""
        if self.config.post_latency:
            await asyncio.sleep(self.config.post_latency)
        with self._post_lock:
            result, conn, frame = self._accept(connection_id, data)
            if conn is not None:
                self.posts += 1
        if conn is not None:
            write_frame(conn.socket, *frame)
        return result

    def post_nowait(self, connection_id: str, data: bytes) -> PostResult:
        """PostToConnection from any thread, answered as soon as the message is accepted (as
        AWS answers 200 before the client has it): the send runs later on the gateway's loop.

        The in-process fan-out posts this way: waiting for the loop on every post made the
        round trip between threads, not CPU, the limit of the local stack's post rate."""
        if self.loop is None:
            return PostResult(410, "GoneException", "")
        with self._post_lock:
            result, conn, frame = self._accept(connection_id, data)
            if conn is None:
                return result
            self.posts += 1
            conn.queued += len(data)
            self._outbox.append((conn, frame))
            if self._outbox_scheduled:
                return result
            self._outbox_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._send_outbox)
        except RuntimeError:  # the gateway stopped meanwhile: its connections are gone
            return PostResult(410, "GoneException", "")
        return result

    def _send_outbox(self) -> None:
        with self._post_lock:
            batch, self._outbox = self._outbox, []
            self._outbox_scheduled = False
            for conn, (data, _) in batch:
                conn.queued -= len(data)
        for conn, (data, text) in batch:
            write_frame(conn.socket, data, text)


def _plain_headers(headers: Headers) -> dict[str, str]:
    return {name: value for name, value in headers.raw_items()}


def _allows(answer: Any) -> bool:
    if not isinstance(answer, Mapping):
        return False
    statements = (answer.get("policyDocument") or {}).get("Statement") or []
    effects = [s.get("Effect") for s in statements if isinstance(s, Mapping)]
    return bool(effects) and all(e == "Allow" for e in effects)


def _with_authorizer(info: ConnectionInfo, context: Mapping[str, Any]) -> ConnectionInfo:
    return replace(info, authorizer=context)


# What callers imported from here before `config` and `posting` were split out of it.
__all__ = ["MAX_CLIENT_BUFFER_BYTES", "MAX_MESSAGE_BYTES", "GatewayConfig", "Handler", "Handlers",
           "LocalApiGateway", "PostResult", "Throttle", "new_connection_id"]
