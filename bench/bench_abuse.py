"""What abuse can cost: Redis memory per connection and per key, and what an abusive
connection-hour costs in messages, Lambda invocations and handler time, against a normal viewer.

    .venv/bin/python bench/bench_abuse.py                 # ~1 minute
    .venv/bin/python bench/bench_abuse.py --connections 4000 --keys 50

Part 1, memory: the registry as the handlers write it (`functions.ws.wiring.build_app` with the
deployment's defaults) on a private Redis: `--connections` connections, each subscribing
`--keys` keys (a share of them watched by many, the rest by one, as screeners overlap).
`used_memory` deltas give bytes per connection (connect only) and per subscribed key; the
baseline in the same run is the same number of plain `SET ltp:SEG:ID price EX 30` entries (what
one price costs the cache), so the figures read as "a connection costs N prices".

Part 2, cost: the real handlers behind the local API Gateway, the deployment's admission
settings (WS_MESSAGE_RATE 5/s, WS_MESSAGE_BURST 20, WS_ABUSE_STRIKES 3):
- a normal viewer: one subscribe, then a ping every 20 s (the page's silence probe, an upper
  bound: it pings only when nothing arrives), for `--viewer-seconds` of wall time scaled to an
  hour;
- an abuser: pings as fast as it can until the server cuts it; its whole life is measured
  (messages sent, handler invocations = Lambda invocations, handler seconds = Lambda
  duration, posts). An abusive *hour* is that life times the connects one address can make in
  an hour (`ws_token` per address: WS_TOKEN_PER_IP_PER_MINUTE, 30/min by default).
Printed: both per hour and their ratio, with AWS list prices (API Gateway $1.00 per million
messages, Lambda $0.20 per million requests + $0.0000166667 per GB-s at 256 MB... the
WebSocket handlers' memory from the template, here a parameter).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import bench_redis  # noqa: E402

API_GATEWAY_PER_MESSAGE = 1.00 / 1_000_000
LAMBDA_PER_REQUEST = 0.20 / 1_000_000
LAMBDA_PER_GB_SECOND = 0.0000166667


# --- part 1: memory -----------------------------------------------------------------------------


def used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def memory(redis_url: str, connections: int, keys_each: int) -> dict[str, float]:
    import redis

    from functions.settings import Settings
    from functions.ws.settings import RealtimeSettings
    from functions.ws.wiring import build_app

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    environ = {"REDIS_URL": redis_url, "WS_MAX_CONNECTIONS_PER_IP": "0",
               "WS_MAX_CONNECTIONS": "0"}
    app = build_app(Settings.from_env(environ), RealtimeSettings.from_env(environ),
                    management=lambda event: None)  # type: ignore[arg-type,return-value]
    registry = app.registry
    rng = random.Random(7)
    popular = [f"NSE_EQ:{i}" for i in range(1, 201)]
    try:
        start = used(client)
        for i in range(connections):
            cid = f"c{i:07d}="
            address = f"10.0.{i // 250}.{i % 250}"
            registry.connect(cid, meta={"connected_at": 0, "source_ip": address,
                                        "subject": f"ip:{address}"})
        connected = used(client)
        for i in range(connections):
            own = [f"NSE_FNO:{i * keys_each + j}" for j in range(keys_each // 2)]
            shared = rng.sample(popular, keys_each - len(own))
            registry.subscribe(f"c{i:07d}=", [*shared, *own])
        subscribed = used(client)
        client.flushdb()
        base = used(client)
        pipe = client.pipeline(transaction=False)
        for i in range(connections):
            pipe.set(f"ltp:NSE_EQ:{900_000 + i}", "2891.55", ex=30)
        pipe.execute()
        prices = used(client)
    finally:
        client.flushdb()
        registry.close()
        client.close()
    per_price = (prices - base) / connections
    per_connection = (connected - start) / connections
    per_key = (subscribed - connected) / (connections * keys_each)
    return {"per_connection": per_connection, "per_key": per_key, "per_price": per_price,
            "connections": connections, "keys_each": keys_each}


# --- part 2: cost -------------------------------------------------------------------------------


@dataclass
class Meter:
    """Counts what the handlers were asked to do and how long they took (Lambda's view)."""

    invocations: int = 0
    seconds: float = 0.0
    posts: int = 0
    by_connection: dict[str, list[float]] = field(default_factory=dict)

    def wrap(self, handler: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        def timed(event: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                return handler(event)
            finally:
                elapsed = time.perf_counter() - started
                self.invocations += 1
                self.seconds += elapsed
                cid = str(event.get("requestContext", {}).get("connectionId", ""))
                entry = self.by_connection.setdefault(cid, [0, 0.0])
                entry[0] += 1
                entry[1] += elapsed

        return timed


@contextlib.asynccontextmanager
async def guarded(redis_url: str, meter: Meter) -> AsyncIterator[Any]:
    from functions.settings import Settings
    from functions.ws.settings import RealtimeSettings
    from functions.ws.wiring import build_app
    from local.apigw import GatewayConfig, Handlers, LocalApiGateway
    from local.apigw.client import boto3_client

    environ = {"REDIS_URL": redis_url}
    holder: dict[str, Any] = {}

    class CountingApi:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def post_to_connection(self, **kwargs: Any) -> Any:
            meter.posts += 1
            return self._inner.post_to_connection(**kwargs)

        def delete_connection(self, **kwargs: Any) -> Any:
            return self._inner.delete_connection(**kwargs)

    app = build_app(Settings.from_env(environ), RealtimeSettings.from_env(environ),
                    management=lambda event: holder["api"])
    handlers = Handlers(message=meter.wrap(app.message), connect=meter.wrap(app.connect),
                        disconnect=meter.wrap(app.disconnect))
    gateway = LocalApiGateway(handlers, GatewayConfig())
    await gateway.start()
    holder["api"] = CountingApi(boto3_client(gateway))
    try:
        yield gateway
    finally:
        await gateway.stop()
        app.registry.close()


async def abuser_life(ws_url: str, rate: float) -> dict[str, float]:
    """Ping at `rate` per second (0: as fast as possible) until cut; what was sent and how
    long it lived."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    sent = received = 0
    started = time.monotonic()
    async with connect(ws_url, max_queue=None) as ws:

        async def read() -> None:
            nonlocal received
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    received += 1

        reader = asyncio.create_task(read())
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send('{"action":"ping"}')
                sent += 1
                if rate:
                    await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
                elif sent % 50 == 0:
                    await asyncio.sleep(0)  # let the gateway's close reach us
        await reader
    return {"sent": sent, "received": received, "life_s": time.monotonic() - started}


async def viewer(ws_url: str, seconds: float, ping_every: float) -> dict[str, float]:
    from websockets.asyncio.client import connect

    sent = 0
    async with connect(ws_url) as ws:
        await ws.send('{"action":"subscribe","keys":["NSE_EQ:2885","NSE_EQ:1333","IDX_I:13"]}')
        sent += 1
        await ws.recv()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(min(ping_every, end - time.monotonic()))
            if time.monotonic() >= end:
                break
            await ws.send('{"action":"ping"}')
            sent += 1
            await ws.recv()
    return {"sent": sent}


async def cost(redis_url: str, viewer_seconds: float, ping_every: float,
               abuse_rate: float) -> dict[str, Any]:
    normal, abusive = Meter(), Meter()
    async with guarded(redis_url, normal) as gateway:
        seen = await viewer(gateway.ws_url, viewer_seconds, ping_every)
    scale = 3600.0 / viewer_seconds
    viewer_hour = {"messages": seen["sent"] * scale, "invocations": normal.invocations * scale,
                   "seconds": normal.seconds * scale, "posts": normal.posts * scale}
    async with guarded(redis_url, abusive) as gateway:
        life = await abuser_life(gateway.ws_url, abuse_rate)
        await asyncio.sleep(0.2)  # the $disconnect
    abuser_conn = {"messages": life["sent"], "invocations": abusive.invocations,
                   "seconds": abusive.seconds, "posts": abusive.posts, "life_s": life["life_s"]}
    return {"viewer_hour": viewer_hour, "abuser_connection": abuser_conn}


def dollars(figures: dict[str, float], memory_gb: float) -> float:
    return (figures["messages"] * API_GATEWAY_PER_MESSAGE
            + figures["invocations"] * LAMBDA_PER_REQUEST
            + figures["seconds"] * memory_gb * LAMBDA_PER_GB_SECOND)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=50, help="keys each connection subscribes")
    parser.add_argument("--viewer-seconds", type=float, default=10.0)
    parser.add_argument("--ping-every", type=float, default=1.0,
                        help="viewer ping period in this run (scaled to the page's 20 s)")
    parser.add_argument("--abuse-rate", type=float, default=200.0,
                        help="the abuser's messages per second (0: as fast as it can)")
    parser.add_argument("--tokens-per-minute", type=int, default=30,
                        help="ws_token per address per minute (WS_TOKEN_PER_IP_PER_MINUTE)")
    parser.add_argument("--cool-off", type=int, default=600,
                        help="WS_ABUSE_COOL_OFF_SECONDS: an address cut may not reconnect")
    parser.add_argument("--lambda-memory-mb", type=int, default=256)
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()

    with bench_redis(args.redis_url or None) as redis_url:
        mem = memory(redis_url, args.connections, args.keys)
        print(f"memory ({mem['connections']} connections x {mem['keys_each']} keys, "
              "registry as the handlers write it):")
        print(f"  per connection        {mem['per_connection']:8.0f} B  "
              f"({mem['per_connection'] / mem['per_price']:.1f} x a cached price)")
        print(f"  per subscribed key    {mem['per_key']:8.0f} B  "
              f"({mem['per_key'] / mem['per_price']:.2f} x a cached price)")
        print(f"  baseline: one price   {mem['per_price']:8.0f} B  (SET ltp:SEG:ID p EX 30)")
        limit = 20_000 * (mem["per_connection"] + 500 * mem["per_key"])
        print(f"  bound at the defaults (20,000 connections x 500 keys): "
              f"{limit / 2**20:.0f} MiB")

        # The run's viewer pings every `ping_every` s; the page at most every 20 s.
        result = asyncio.run(cost(redis_url, args.viewer_seconds, args.ping_every,
                                  args.abuse_rate))
    page_scale = args.ping_every / 20.0
    viewer_hour = {k: v * page_scale for k, v in result["viewer_hour"].items()}
    gb = args.lambda_memory_mb / 1024
    conn = result["abuser_connection"]
    by_tokens = args.tokens_per_minute * 60
    cooled = min(by_tokens, 3600 // args.cool_off + 1) if args.cool_off else by_tokens

    def hour_of(connects: int) -> dict[str, float]:
        return {k: v * connects for k, v in conn.items() if k != "life_s"}

    print("\ncost (the handlers behind the local API Gateway, production admission defaults):")
    print(f"  abusive connection, until cut: {conn['messages']:.0f} messages sent, "
          f"{conn['invocations']:.0f} handler invocations, {conn['seconds'] * 1000:.0f} ms "
          f"handler time, {conn['posts']:.0f} posts, cut after {conn['life_s']:.1f} s")
    rows = [("normal viewer-hour", viewer_hour),
            (f"abusive address-hour, no cool-off ({by_tokens} connects)", hour_of(by_tokens)),
            (f"abusive address-hour, cool-off {args.cool_off} s ({cooled} connects)",
             hour_of(cooled))]
    print(f"  {'':44s} {'messages':>10s} {'Lambda req':>11s} {'Lambda s':>9s} "
          f"{'posts':>8s} {'USD':>8s}")
    for name, figures in rows:
        print(f"  {name:44s} {figures['messages']:10.0f} {figures['invocations']:11.0f} "
              f"{figures['seconds']:9.1f} {figures['posts']:8.0f} "
              f"{dollars(figures, gb):8.4f}")
    normal = max(dollars(viewer_hour, gb), 1e-12)
    print(f"  ratio abusive / normal viewer-hour: {dollars(hour_of(cooled), gb) / normal:.0f}x "
          f"with the cool-off, {dollars(hour_of(by_tokens), gb) / normal:.0f}x without (each "
          f"connection is cut within {conn['life_s']:.1f} s at {args.abuse_rate:g} msg/s)")


if __name__ == "__main__":
    main()
