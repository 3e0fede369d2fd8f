"""The stack's own I/O pieces: listening sockets, the site's server, the stream registration
and the `@connections` seam between the fan-out and whichever gateway is up.

Each is a small function or class that `stack` calls; what has to be undone is registered on
the exit stack it is given, so the order of shutdown stays the reverse of startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from local.run.config import STREAM_NAME, STREAM_REFRESH_SECONDS, StartupError

log = logging.getLogger("ltp-local")


def bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is in use ({what}); stop what uses it or pick "
                "another with --port (the WebSocket takes the next port)"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class CurrentGateway:
    """`@connections` of whichever local gateway is up now (the WebSocket can be cut and
    brought back); while none is, every post answers 410 Gone, as for a closed connection."""

    def __init__(self) -> None:
        self.gateway: Any = None

    def post_to_connection(self, *, Data: bytes, ConnectionId: str) -> Any:  # noqa: N803
        return self._management("PostToConnection").post_to_connection(
            Data=Data, ConnectionId=ConnectionId)

    def delete_connection(self, *, ConnectionId: str) -> Any:  # noqa: N803
        return self._management("DeleteConnection").delete_connection(ConnectionId=ConnectionId)

    def _management(self, operation: str) -> Any:
        from botocore.exceptions import ClientError

        from local.apigw.client import InProcessManagement

        gateway = self.gateway
        if gateway is None or gateway.loop is None:
            gone: Any = {"Error": {"Code": "GoneException", "Message": ""},
                         "ResponseMetadata": {"HTTPStatusCode": 410}}
            raise ClientError(gone, operation)
        return InProcessManagement(gateway)


async def serve_site(app: Any, sock: socket.socket, *,
                     exits: contextlib.AsyncExitStack) -> None:
    """Serve the ASGI `app` on `sock` until `exits` closes; returns once it is up."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # ltp-local owns SIGINT/SIGTERM: uvicorn's own handler stopped the site before
            # the stream's stop request (made through it) could go out.
            yield

    server = Server(uvicorn.Config(app, lifespan="off", log_level="warning",
                                   access_log=False, ws="none"))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="site")
    while not server.started:
        if task.done():
            task.result()
            raise StartupError("the web server stopped while starting")
        await asyncio.sleep(0.01)

    async def stop() -> None:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 5)
        except TimeoutError:
            await cancel(task)

    exits.push_async_callback(stop)


async def register_stream(page_url: str, keys: Sequence[str], *, admin_key: str,
                          exits: contextlib.AsyncExitStack) -> None:
    """Start the watchlist's stream through the HTTP API, as a user would, keep it alive while
    the stack runs, and stop it when `exits` closes."""
    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    client = httpx.AsyncClient(base_url=page_url, headers=headers, timeout=10)
    exits.push_async_callback(client.aclose)
    body = {"name": STREAM_NAME, "keys": list(keys)}

    async def start() -> None:
        response = await client.post("/screeners/ltp/start", json=body)
        if response.status_code >= 300:
            raise StartupError(f"POST /screeners/ltp/start answered {response.status_code}:"
                               f" {response.text[:300]}")

    await start()

    async def refresh() -> None:
        while True:
            await asyncio.sleep(STREAM_REFRESH_SECONDS)
            try:
                await start()
            except (StartupError, httpx.HTTPError) as exc:
                log.warning("could not refresh the stream: %s", exc)

    task = asyncio.create_task(refresh(), name="stream-refresh")

    async def stop() -> None:
        await cancel(task)
        with contextlib.suppress(httpx.HTTPError):
            await client.post("/screeners/ltp/stop", json={"name": STREAM_NAME})

    exits.push_async_callback(stop)


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
