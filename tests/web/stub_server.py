"""A small stand-in for the deployed system, to test the page's own logic in a real browser.

One Starlette app on loopback serves `web/`, a `config.json`, `GET|POST /api/v1/current_prices`
and a WebSocket at `/ws` that speaks the page's protocol (subscribe -> snapshot, ping -> pong,
then `screener_ltp_batch_update`s with per-key versions). Tests steer it from their own thread:
cut and restore the WebSocket, freeze a key, send a hand-made update, fail the HTTP API.
The full system is tested separately against `ltp-local` (test_local_stack.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


@dataclass
class StubState:
    keys: list[str]
    prices: dict[str, float] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    not_carried: set[str] = field(default_factory=set)  # subscribe answers `not_carried`
    ws_open: bool = True
    api_ok: bool = True
    token: str | None = None
    polls: int = 0
    connects: int = 0
    refused: int = 0
    pings: int = 0
    subscribed: list[list[str]] = field(default_factory=list)


class StubServer:
    def __init__(
        self,
        keys: list[str],
        *,
        watchlist: list[dict[str, str]] | None = None,
        options: dict[str, Any] | None = None,
        token: str | None = None,
        tick_every: float = 0.05,
        keys_per_tick: int = 10,
        seed: int = 7,
    ) -> None:
        self.state = StubState(keys=list(keys), token=token)
        self.watchlist = watchlist if watchlist is not None else [{"key": k} for k in keys]
        self.options = {
            "reconnectBaseMs": 100,
            "reconnectMaxMs": 800,
            "pollIntervalMs": 1500,
            **(options or {}),
        }
        self.tick_every = tick_every
        self.keys_per_tick = keys_per_tick
        self.random = random.Random(seed)
        self.clients: set[WebSocket] = set()
        self.subscriptions: dict[WebSocket, set[str]] = {}
        self.muted: set[WebSocket] = set()
        self.forgotten: set[WebSocket] = set()
        self.stalled: dict[WebSocket, set[str]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""
        for i, key in enumerate(self.state.keys):
            self.state.prices[key] = 100.0 + 10 * i
            self.state.versions[key] = 1

    # --- the app -------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/config.json", self.config_json),
                Route("/api/v1/current_prices", self.current_prices, methods=["GET", "POST"]),
                WebSocketRoute("/ws", self.websocket),
                Mount("/", StaticFiles(directory=WEB_DIR, html=True)),
            ]
        )

    async def config_json(self, request: Request) -> Response:
        config: dict[str, Any] = {
            "apiUrl": self.url,
            "wsUrl": self.url.replace("http://", "ws://") + "/ws",
            "watchlist": self.watchlist,
            "watchlistName": "stub",
            "options": self.options,
        }
        if self.state.token:
            config["wsToken"] = self.state.token
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    async def current_prices(self, request: Request) -> Response:
        self.state.polls += 1
        if not self.state.api_ok:
            return JSONResponse({"detail": "down"}, status_code=503, headers={"Retry-After": "1"})
        if request.method == "POST":
            keys = (await request.json())["keys"]
        else:
            keys = [k for k in request.query_params.get("keys", "").split(",") if k]
        prices = {k: self.state.prices.get(k) for k in keys}
        return JSONResponse({"prices": prices, "count": len(prices), "cached_count": len(prices),
                             "api_fetched_count": 0, "missing": []})

    async def websocket(self, ws: WebSocket) -> None:
        if not self.state.ws_open or (
            self.state.token and ws.query_params.get("token") != self.state.token
        ):
            self.state.refused += 1
            await ws.close(code=1008)  # before accept: the handshake fails with 403
            return
        await ws.accept()
        self.state.connects += 1
        self.clients.add(ws)
        self.subscriptions[ws] = set()
        try:
            while True:
                message = orjson.loads(await ws.receive_text())
                if ws in self.muted:
                    continue
                if ws in self.forgotten and message.get("action") in ("ping", "subscribe"):
                    # What functions.ws answers once the registry lost the connection.
                    await ws.send_text('{"type":"error","code":"reconnect",'
                                       '"reason":"this connection is not registered"}')
                    continue
                if message.get("action") == "ping":
                    self.state.pings += 1
                    await ws.send_text('{"type":"pong"}')
                elif message.get("action") == "subscribe":
                    refused = [k for k in message["keys"] if k in self.state.not_carried]
                    keys = [k for k in message["keys"]
                            if k in self.state.prices and k not in refused]
                    self.state.subscribed.append(list(message["keys"]))
                    self.subscriptions[ws].update(keys)
                    prices = {k: {"ltp": self.state.prices[k], "version": self.state.versions[k]}
                              for k in keys}
                    # Text frames, as API Gateway sends posted UTF-8 (local.apigw.posting).
                    await ws.send_text(orjson.dumps(
                        {"type": "snapshot", "prices": prices, "missing": []}).decode())
                    if refused:  # what functions.ws answers for keys the feed cannot carry
                        await ws.send_text(orjson.dumps(
                            {"type": "error", "code": "not_carried", "keys": refused,
                             "reason": f"not subscribed: {', '.join(refused)}"}).decode())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.clients.discard(ws)
            self.subscriptions.pop(ws, None)
            self.muted.discard(ws)
            self.forgotten.discard(ws)

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_every)
            live = [k for k in self.state.keys if k not in self.state.frozen]
            chosen = self.random.sample(live, min(self.keys_per_tick, len(live)))
            updates = []
            for key in chosen:
                step = self.random.choice((-1, 1)) * self.random.randint(5, 50) / 100
                price = round(max(1.0, self.state.prices[key] + step), 2)
                self.state.prices[key] = price
                self.state.versions[key] += 1
                updates.append({"key": key, "ltp": price, "version": self.state.versions[key]})
            await self.broadcast(updates)

    async def broadcast(self, updates: list[dict[str, Any]]) -> None:
        for ws, keys in list(self.subscriptions.items()):
            if ws in self.muted:
                continue
            mine = [u for u in updates if u["key"] in keys]
            if mine:
                with contextlib.suppress(Exception):
                    await ws.send_text(orjson.dumps(
                        {"type": "screener_ltp_batch_update", "updates": mine}).decode())

    # --- control from the test thread -----------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    def cut(self) -> None:
        """Refuse new WebSocket connections and close the open ones."""

        async def _cut() -> None:
            self.state.ws_open = False
            for ws in list(self.clients):
                with contextlib.suppress(Exception):
                    await ws.close(code=1001)

        self.call(_cut())

    def mute(self) -> None:
        """Keep the open sockets open but never send on them again (a half-dead connection)."""
        self.muted.update(self.clients)

    def forget(self) -> None:
        """Keep the open sockets open but stop knowing them (a wiped registry): their pings and
        subscribes are answered with `reconnect` errors and no update reaches them."""

        async def _forget() -> None:
            self.forgotten.update(self.clients)
            for ws in self.clients:
                self.subscriptions[ws] = set()

        self.call(_forget())

    def stall(self) -> None:
        """Keep the open sockets open and answering pings, but send them no update again (the
        relay behind a healthy-looking socket stopped)."""

        async def _stall() -> None:
            for ws in self.clients:
                self.stalled[ws] = self.subscriptions[ws]
                self.subscriptions[ws] = set()

        self.call(_stall())

    def resume(self) -> None:
        """Undo `stall`: the sockets get their keys' updates again."""

        async def _resume() -> None:
            for ws, keys in self.stalled.items():
                if ws in self.subscriptions:
                    self.subscriptions[ws] = keys
            self.stalled.clear()

        self.call(_resume())

    def restore(self) -> None:
        self.state.ws_open = True

    def send(self, updates: list[dict[str, Any]]) -> None:
        self.call(self.broadcast(updates))

    # --- lifecycle -------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[StubServer]:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning",
                                ws="websockets-sansio", lifespan="off")
        self.server = uvicorn.Server(config)
        ready = threading.Event()

        def serve() -> None:
            async def main() -> None:
                self.loop = asyncio.get_running_loop()
                tick = asyncio.create_task(self.ticker())
                serving = asyncio.create_task(self.server.serve())  # type: ignore[union-attr]
                while not self.server.started:  # type: ignore[union-attr]
                    if serving.done():
                        break
                    await asyncio.sleep(0.01)
                ready.set()
                await serving
                tick.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tick

            asyncio.run(main())

        self.thread = threading.Thread(target=serve, daemon=True, name="stub-server")
        self.thread.start()
        if not ready.wait(10) or not self.server.started:
            raise RuntimeError("stub server did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self.server.should_exit = True
            self.thread.join(10)


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
