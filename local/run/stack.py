"""The whole system in one asyncio program, wired as in AWS but on loopback.

    Redis (existing / private redis-server / embedded)
    DhanHQ v2 simulator + REST stand-in   (or a given feed, or the real DhanHQ feed)
      -> streamer (streamer.service.Streamer: feed -> ltp:* + live_ltp_updates)
      -> relay bridge (streamer.bridge.RelayBridge) -> fan-out (functions.fanout.Fanout)
      -> local API Gateway (local.apigw: WebSocket + @connections, functions.ws handlers)
    page + HTTP API on one origin (local.run.site: web/, config.json, Mangum handler)

Production code is only imported and run here, never changed: each deployable is built by its
own wiring function (`functions.api.wiring.build`, `functions.ws.wiring.build_app`,
`functions.fanout.wiring.build_fanout`, `streamer.bridge_main.build_bridge`,
`streamer.wiring.build_clients`) from settings read out of an environment shaped like the one
the CDK template gives it, so every part reaches Redis through `core.redis_client` with the
AUTH token, as in AWS. What differs from AWS is only what lies outside the deployables: threads
stand in for Lambda environments, the bridge's invoker calls the fan-out in-process instead of
`lambda:InvokeAsync`, and the fan-out posts into the local gateway directly instead of over
HTTPS (its `@connections` HTTP endpoint is up as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.instrument_master import SAMPLE_PATH, describe, load_master, open_source
from core.instrument_master import parse_scrip_master as _parse
from core.instruments import InstrumentKey

log = logging.getLogger("ltp-local")

SIM_CLIENT_ID = "1000000001"  # ltp-sim's defaults, for --feed-url pointing at one
SIM_TOKEN = "sim-token"
STREAM_NAME = "ltp-local"
STREAM_REFRESH_SECONDS = 20 * 60  # websocket_stream:* lives 1 h unless started again
# One process runs every shard's fan-out here: shards exist to spread Lambda invocations, and
# in one process they only multiply the per-window work (claim, encoding) by their number
# (bench_e2e_ws at 1,000 clients: p99 301 ms with 1 shard, 440 ms with 16). Posts into the
# in-process gateway never block, so the fan-out needs no thread pool either.
LOCAL_SHARDS = 1
LOCAL_FANOUT_WORKERS = 1


class StartupError(Exception):
    """Something the user can fix (a port in use, no Redis); the message says what."""


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    ws_port: int | None = None  # default: port + 1 (0 when port is 0)
    redis_url: str | None = None
    feed_url: str | None = None
    use_simulator: bool = False  # even when DhanHQ credentials are in the environment
    rate: float = 100.0
    keys: list[InstrumentKey] | None = None
    instruments: str = str(SAMPLE_PATH)
    seed: int = 1
    environ: Mapping[str, str] = field(default_factory=dict)
    page_options: dict[str, Any] = field(default_factory=dict)
    bridge_min_window: float = 0.25


@dataclass(frozen=True)
class FeedChoice:
    kind: str  # "simulator", "given" or "dhan"
    url: str
    client_id: str
    access_token: str
    rest_base_url: str | None


# What the parts import when they start; checked first, so a half-installed environment is
# named at once rather than after Redis and the feed are already up.
RUNTIME_MODULES = ("redis", "websockets", "orjson", "fastapi", "mangum", "uvicorn", "boto3",
                   "aws_lambda_powertools")


def check_dependencies() -> None:
    """Raises ModuleNotFoundError naming the first runtime package that cannot be imported."""
    import importlib

    for name in RUNTIME_MODULES:
        importlib.import_module(name)


def sample_keys() -> list[InstrumentKey]:
    with open_source(SAMPLE_PATH) as lines:
        return [i.key for i in _parse(lines)]


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
        from botocore.exceptions import ClientError

        from local.apigw.client import InProcessManagement

        gateway = self.gateway
        if gateway is None or gateway.loop is None:
            gone: Any = {"Error": {"Code": "GoneException", "Message": ""},
                         "ResponseMetadata": {"HTTPStatusCode": 410}}
            raise ClientError(gone, "PostToConnection")
        return InProcessManagement(gateway).post_to_connection(Data=Data, ConnectionId=ConnectionId)


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
        """REDIS_URL and, for a server started here, REDIS_AUTH_TOKEN: what ECS gives the
        containers (the Lambdas get the token's secret ARN instead; same client factory)."""
        env = {"REDIS_URL": self.redis_url}
        if self.redis_password:
            env["REDIS_AUTH_TOKEN"] = self.redis_password
        return env

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
        env = self.options.environ
        client_id = env.get("DHAN_CLIENT_ID", "").strip()
        token = env.get("DHAN_ACCESS_TOKEN", "").strip()
        rest = env.get("DHAN_API_BASE_URL", "").strip() or None
        if self.options.feed_url:
            return FeedChoice("given", self.options.feed_url, client_id or SIM_CLIENT_ID,
                              token or SIM_TOKEN, rest)
        if client_id and token and not self.options.use_simulator:
            from core.config import DEFAULT_API_BASE_URL, DEFAULT_FEED_URL

            url = env.get("DHAN_FEED_URL", "").strip() or DEFAULT_FEED_URL
            return FeedChoice("dhan", url, client_id, token, rest or DEFAULT_API_BASE_URL)
        return FeedChoice("simulator", "", SIM_CLIENT_ID, "sim-" + secrets.token_hex(8), None)

    async def _start_feed(self) -> None:
        choice = self._choose_feed()
        if choice.kind == "simulator":
            from local.dhan_sim.feed import FeedSimulator, SimConfig
            from local.dhan_sim.prices import PriceBook
            from local.dhan_sim.rest import RestStandIn

            book = PriceBook(seed=self.options.seed)
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
        env = {k: v for k, v in self.options.environ.items()
               if not k.endswith("_ARN") and k not in ("STREAMER_CLUSTER", "STREAMER_SERVICE",
                                                       "REDIS_AUTH_TOKEN")}
        if not self.ws_secret:
            self.ws_secret = env.get("WS_TOKEN_SECRET", "") or secrets.token_urlsafe(32)
        env.update({"DHAN_CLIENT_ID": self.feed.client_id,
                    "DHAN_ACCESS_TOKEN": self.feed.access_token,
                    "WS_TOKEN_SECRET": self.ws_secret,
                    "WS_SHARDS": str(LOCAL_SHARDS), "FANOUT_MAX_WORKERS": str(LOCAL_FANOUT_WORKERS),
                    **self._redis_env()})
        if self.feed.rest_base_url:
            env["DHAN_API_BASE_URL"] = self.feed.rest_base_url
        return env

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
        from streamer.bridge import LocalInvoker
        from streamer.bridge_main import BridgeSettings, build_bridge

        env = self._functions_env()
        fanout = build_fanout(Settings.from_env(env), RealtimeSettings.from_env(env),
                              management=self.management)
        self.exits.callback(fanout.close)
        invoker = LocalInvoker(run=fanout.run)
        window_ms = round(self.options.bridge_min_window * 1000)
        bridge_env = {**self._redis_env(), "WS_WINDOW_MIN_MS": str(window_ms),
                      "WS_WINDOW_MAX_MS": str(max(window_ms, 2000))}
        self.bridge = build_bridge(BridgeSettings.from_env(bridge_env), invoker=invoker)
        self.exits.push_async_callback(self.bridge.close)
        task = asyncio.create_task(self.bridge.run(), name="bridge")
        self.exits.push_async_callback(invoker.drain)
        self.exits.push_async_callback(_cancel, task)

    async def _start_streamer(self) -> None:
        from streamer.settings import load_settings
        from streamer.wiring import build_clients, build_streamer

        assert self.feed is not None
        env = {k: v for k, v in self.options.environ.items()
               if not k.endswith("_ARN") and k != "REDIS_AUTH_TOKEN"}
        env.update({**self._redis_env(), "DHAN_FEED_URL": self.feed.url,
                    "DHAN_CLIENT_ID": self.feed.client_id,
                    "DHAN_ACCESS_TOKEN": self.feed.access_token,
                    "STREAMER_AUTO_STOP": "false", "STREAMER_EMF_METRICS": "false"})
        if self.feed.kind == "simulator":
            env["STREAMER_ALWAYS_OPEN"] = "true"  # the simulator trades around the clock
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
                await _cancel(task)

        self.exits.push_async_callback(stop)

    async def _start_site(self, api_pool: Any) -> None:
        import uvicorn

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
        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                # ltp-local owns SIGINT/SIGTERM: uvicorn's own handler stopped the site before
                # the stream's stop request (made through it) could go out.
                yield

        server = Server(uvicorn.Config(site, lifespan="off", log_level="warning",
                                       access_log=False, ws="none"))
        task = asyncio.create_task(server.serve(sockets=[self._web_socket]), name="site")
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
                await _cancel(task)

        self.exits.push_async_callback(stop)
        host = self.options.host if self.options.host not in ("0.0.0.0", "::") else "127.0.0.1"
        port = self._web_socket.getsockname()[1]
        self.page_url = f"http://{_bracket(host)}:{port}/"

    async def _register_stream(self) -> None:
        keys = [item["key"] for item in self.watchlist]
        admin = self.options.environ.get("ADMIN_API_KEY", "").strip()
        headers = {"Authorization": f"Bearer {admin}"} if admin else {}
        client = httpx.AsyncClient(base_url=self.page_url, headers=headers, timeout=10)
        self.exits.push_async_callback(client.aclose)
        body = {"name": STREAM_NAME, "keys": keys}

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
            await _cancel(task)
            with contextlib.suppress(httpx.HTTPError):
                await client.post("/screeners/ltp/stop", json={"name": STREAM_NAME})

        self.exits.push_async_callback(stop)
        self.say(f"stream     {STREAM_NAME!r}: {len(keys)} instruments")


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["LocalStack", "StackOptions", "StartupError", "sample_keys"]
