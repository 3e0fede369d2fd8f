"""The whole system in one asyncio program, wired as in AWS but on loopback.

    Redis (existing / private redis-server / embedded)
    DhanHQ v2 simulator + REST stand-in   (or a given feed, or the real DhanHQ feed)
      -> streamer (streamer.service.Streamer: feed -> ltp:* + live_ltp_updates)
      -> relay bridge (relay.bridge.RelayBridge) -> fan-out (functions.fanout.Fanout)
      -> local API Gateway (local.apigw: WebSocket + @connections, functions.ws handlers)
    page + HTTP API on one origin (local.run.site: web/, config.json, Mangum handler)

Production code is only imported and run here, never changed: each deployable is built by its
own wiring function (`functions.api.wiring.build`, `functions.ws.wiring.build_app`,
`functions.fanout.wiring.build_fanout`, `relay.wiring.build_bridge`,
`streamer.wiring.build_clients`) from settings read out of an environment shaped like the one
the CDK template gives it, so every part reaches Redis through `core.redis_client` with the
AUTH token, as in AWS. What differs from AWS is only what lies outside the deployables: threads
stand in for Lambda environments, the bridge's invoker calls the fan-out in-process instead of
`lambda:InvokeAsync`, and the fan-out posts into the local gateway directly instead of over
HTTPS (its `@connections` HTTP endpoint is up as well).

This module is the order things start in; the choices and environments are made in `config`
(pure) and the stack's own sockets and servers are in `serving`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Callable
from typing import Any

from core.instrument_master import describe, load_master
from local.run.config import (
    STREAM_NAME,
    FeedChoice,
    StackOptions,
    StartupError,
    bridge_env,
    check_dependencies,
    choose_feed,
    functions_env,
    redis_env,
    sample_keys,
    streamer_env,
)
from local.run.serving import CurrentGateway, bind, bracket, cancel, register_stream, serve_site


class LocalStack:
    """`async with LocalStack(options) as stack:` runs everything until the block ends."""

    def __init__(self, options: StackOptions, *, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.say = say
        self.exits = contextlib.AsyncExitStack()
        self.management = CurrentGateway()
        self.ws_secret = ""
        self.redis_url = ""
        self.redis_password = ""
        self.redis_kind = ""
        self.feed: FeedChoice | None = None
        self.watchlist: list[dict[str, str]] = []
        self.page_url = ""
        self.gateway: Any = None
        self.registry: Any = None
        self.streamer: Any = None
        self.bridge: Any = None
        self.simulator: Any = None
        self._handlers: Any = None
        self._gateway_config: Any = None
        self._web_socket: socket.socket | None = None

    async def __aenter__(self) -> LocalStack:
        try:
            await self.start()
        except BaseException:
            await self.exits.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.exits.aclose()

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        check_dependencies()
        opts = self.options
        ws_port = opts.ws_port if opts.ws_port is not None else (opts.port + 1 if opts.port else 0)
        self._web_socket = bind(opts.host, opts.port, "page and HTTP API")
        self.exits.callback(self._web_socket.close)
        if ws_port:
            bind(opts.host, ws_port, "WebSocket API").close()  # checked now, bound below
        await self._start_redis()
        await self._load_instruments()
        await self._start_feed()
        api_pool = self._start_http_api()
        await self._start_gateway(ws_port)
        await self._start_bridge()
        await self._start_streamer()
        await self._start_site(api_pool)
        await self._register_stream()

    async def _start_redis(self) -> None:
        from local.redis_server import redis_for_the_stack

        try:
            handle = self.exits.enter_context(redis_for_the_stack(self.options.redis_url))
        except RuntimeError as exc:
            raise StartupError(str(exc)) from None
        self.redis_url, self.redis_kind = handle.url, handle.kind
        self.redis_password = handle.password
        auth = ", AUTH required" if handle.password else ""
        self.say(f"redis      {handle.url} ({handle.kind}{auth})")

    def _redis_env(self) -> dict[str, str]:
        return redis_env(self.redis_url, self.redis_password)

    async def _load_instruments(self) -> None:
        from core.config import Env
        from core.errors import InstrumentMasterError
        from core.redis_client import RedisSettings, sync_client

        client = sync_client(RedisSettings.from_env(Env(self._redis_env())))
        self.exits.callback(client.close)
        try:
            result = await asyncio.to_thread(load_master, self.options.instruments, redis=client)
        except InstrumentMasterError as exc:
            raise StartupError(str(exc)) from None
        keys = self.options.keys or sample_keys()
        self.watchlist = [{k: v for k, v in item.items() if v}
                          for item in describe(keys, redis=client)]
        self.say(f"instruments {result.rows} loaded from {self.options.instruments}")

    def _choose_feed(self) -> FeedChoice:
        return choose_feed(self.options)

    async def _start_feed(self) -> None:
        choice = self._choose_feed()
        if choice.kind == "simulator":
            from local.dhan_sim.feed import FeedSimulator, SimConfig
            from local.dhan_sim.prices import PriceBook
            from local.dhan_sim.reference import load_reference
            from local.dhan_sim.rest import RestStandIn

            # The sample's instruments start near their real levels (NIFTY near 25,900).
            book = PriceBook(seed=self.options.seed, reference=load_reference())
            config = SimConfig(host="127.0.0.1", port=0, client_id=choice.client_id,
                               access_token=choice.access_token, rate=self.options.rate,
                               seed=self.options.seed)
            self.simulator = await self.exits.enter_async_context(FeedSimulator(config,
                                                                                prices=book))
            rest = RestStandIn(book, client_id=choice.client_id,
                               access_token=choice.access_token).start()
            self.exits.callback(rest.close)
            choice = FeedChoice("simulator", self.simulator.url, choice.client_id,
                                choice.access_token, rest.base_url)
            self.say(f"feed       DhanHQ v2 simulator {choice.url} ({self.options.rate:g} ticks/s),"
                     f" REST stand-in {rest.base_url}")
        elif choice.kind == "dhan":
            self.say(f"feed       DhanHQ {choice.url} (client {choice.client_id}; "
                     "DHAN_CLIENT_ID/DHAN_ACCESS_TOKEN are set)")
        else:
            self.say(f"feed       {choice.url} (--feed-url)")
        self.feed = choice

    def _functions_env(self) -> dict[str, str]:
        assert self.feed is not None
        if not self.ws_secret:
            self.ws_secret = (self.options.environ.get("WS_TOKEN_SECRET", "")
                              or secrets.token_urlsafe(32))
        return functions_env(self.options.environ, self.feed, ws_secret=self.ws_secret,
                             redis=self._redis_env())

    def _start_http_api(self) -> Any:
        from functions.api.wiring import build
        from functions.settings import Settings
        from local.run.lambda_http import LambdaPool

        settings = Settings.from_env(self._functions_env())
        built: list[Any] = []

        def environment() -> Any:
            # One wiring per stand-in execution environment, as each Lambda one has its own.
            wired = build(settings)
            built.append(wired)
            return wired.handler

        pool = LambdaPool(environment, size=4)
        self.exits.callback(lambda: [w.redis.close() for w in built])
        self.exits.callback(pool.close)
        return pool

    async def _start_gateway(self, ws_port: int) -> None:
        from functions.settings import Settings
        from functions.ws.settings import RealtimeSettings
        from functions.ws.wiring import build_app
        from local.apigw import GatewayConfig, Handlers

        env = self._functions_env()
        settings = Settings.from_env(env)
        app = build_app(settings, RealtimeSettings.from_env(env),
                        management=lambda event: self.management)
        self.registry = app.registry
        self.exits.callback(self.registry.close)
        self._handlers = Handlers(
            message=lambda e, c: app.message(e),
            connect=lambda e, c: app.connect(e),
            disconnect=lambda e, c: app.disconnect(e),
            authorizer=lambda e, c: app.authorize(e),
        )
        self._gateway_config = GatewayConfig(host=self.options.host, ws_port=ws_port)
        await self.start_websocket()
        self.exits.push_async_callback(self.stop_websocket)
        self.say(f"websocket  {self.gateway.ws_url}  (@connections {self.gateway.callback_url})")

    async def start_websocket(self) -> None:
        """(Re)start the local API Gateway on its port; the same handlers and registry."""
        from local.apigw import LocalApiGateway

        gateway = LocalApiGateway(self._handlers, self._gateway_config)
        try:
            await gateway.start()
        except OSError as exc:
            port = self._gateway_config.ws_port
            raise StartupError(f"cannot listen on {self.options.host}:{port} "
                               f"(WebSocket API): {exc.strerror or exc}") from None
        self._gateway_config.ws_port = gateway.ws_port  # keep the port across restarts
        self._gateway_config.http_port = gateway.http_port
        self.gateway = self.management.gateway = gateway

    async def stop_websocket(self) -> None:
        """Close every WebSocket and stop listening (what an outage looks like to a page)."""
        gateway, self.gateway = self.gateway, None
        self.management.gateway = None
        if gateway is not None:
            await gateway.stop()

    async def _start_bridge(self) -> None:
        from functions.fanout.wiring import build_fanout
        from functions.settings import Settings
        from functions.ws.settings import RealtimeSettings
        from local.invoker import LocalInvoker
        from relay.settings import BridgeSettings
        from relay.wiring import build_bridge

        env = self._functions_env()
        fanout = build_fanout(Settings.from_env(env), RealtimeSettings.from_env(env),
                              management=self.management)
        self.exits.callback(fanout.close)
        invoker = LocalInvoker(run=fanout.run)
        env = bridge_env(self._redis_env(), min_window=self.options.bridge_min_window)
        self.bridge = build_bridge(BridgeSettings.from_env(env), invoker=invoker)
        self.exits.push_async_callback(self.bridge.close)
        task = asyncio.create_task(self.bridge.run(), name="bridge")
        self.exits.push_async_callback(invoker.drain)
        self.exits.push_async_callback(cancel, task)

    async def _start_streamer(self) -> None:
        from streamer.settings import load_settings
        from streamer.wiring import build_clients, build_streamer

        assert self.feed is not None
        env = streamer_env(self.options.environ, self.feed, redis=self._redis_env())
        settings = load_settings(env)
        clients = build_clients(settings, environ=env)
        self.exits.push_async_callback(clients.redis.aclose)
        self.streamer = build_streamer(settings, clients)
        task = asyncio.create_task(self.streamer.run(), name="streamer")

        async def stop() -> None:
            self.streamer.request_stop("ltp-local stopping")
            try:
                await asyncio.wait_for(asyncio.shield(task), settings.shutdown_timeout + 2)
            except (TimeoutError, Exception):  # noqa: BLE001 - stopping anyway
                await cancel(task)

        self.exits.push_async_callback(stop)

    async def _start_site(self, api_pool: Any) -> None:
        from functions.wsauth import mint_token
        from local.run.lambda_http import HttpApiProxy
        from local.run.site import LocalSite, PageConfig

        assert self._web_socket is not None
        page = PageConfig(
            ws_port=self._gateway_config.ws_port, ws_stage=self._gateway_config.stage,
            watchlist=self.watchlist, watchlist_name="NIFTY 50" if not self.options.keys else "",
            mint_token=lambda: mint_token(self.ws_secret, subject="ltp-local"),
            options=self.options.page_options,
        )
        site = LocalSite(api=HttpApiProxy(api_pool), config=lambda: page)
        await serve_site(site, self._web_socket, exits=self.exits)
        host = self.options.host if self.options.host not in ("0.0.0.0", "::") else "127.0.0.1"
        port = self._web_socket.getsockname()[1]
        self.page_url = f"http://{bracket(host)}:{port}/"

    async def _register_stream(self) -> None:
        keys = [item["key"] for item in self.watchlist]
        admin = self.options.environ.get("ADMIN_API_KEY", "").strip()
        await register_stream(self.page_url, keys, admin_key=admin, exits=self.exits)
        self.say(f"stream     {STREAM_NAME!r}: {len(keys)} instruments")


# StackOptions, StartupError and sample_keys were imported from here before `config` held them.
__all__ = ["LocalStack", "StackOptions", "StartupError", "sample_keys"]
