"""Publish -> relay bridge -> fan-out (in-process invoker) -> local API Gateway -> WS clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aioredis

from core import names
from core.messages import batch_update, dumps, format_price
from local.invoker import LocalInvoker
from relay.bridge import RelayBridge
from tests.realtime_support import Stack, connect, drain, recv_json, send_json, update, ws_stack


@contextlib.asynccontextmanager
async def bridged(stack: Stack, aredis: aioredis.Redis, window: float) -> AsyncIterator[
        tuple[RelayBridge, LocalInvoker]]:
    fanout = stack.fanout(retry_seconds=0.5)
    invoker = LocalInvoker(run=fanout.run)
    bridge = RelayBridge(redis=aredis, invoker=invoker, min_window=window, max_window=window)
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.wait_for(bridge.subscribed.wait(), 5)
        yield bridge, invoker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await invoker.drain()


async def publish(aredis: aioredis.Redis, updates: list[dict[str, Any]]) -> None:
    """What the streamer does per flush: cache, then publish, in one pipeline."""
    pipe = aredis.pipeline(transaction=False)
    for u in updates:
        pipe.set(names.ltp_key(u["key"]), format_price(u["ltp"]), ex=names.LTP_TTL_SECONDS)
    pipe.publish(names.LIVE_LTP_CHANNEL, dumps(batch_update(updates)))  # type: ignore[arg-type]
    await pipe.execute()


async def test_at_most_one_message_per_client_per_window_with_newest_values(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    keys = [f"NSE_EQ:{i}" for i in range(1, 6)]
    async with ws_stack(redis_url, shards=2) as stack, bridged(stack, aredis, 0.2) as (bridge, _):
        async with connect(stack.gateway.ws_url) as a, connect(stack.gateway.ws_url) as b:
            await send_json(a, {"action": "subscribe", "keys": keys[:3]})
            await send_json(b, {"action": "subscribe", "keys": keys[2:]})
            assert (await recv_json(a))["type"] == (await recv_json(b))["type"] == "snapshot"
            windows_before = bridge.stats.windows
            version = 0
            for _ in range(60):  # ~1.2 s of ticks, many per window
                version += 1
                await publish(aredis, [update(k, version, 100 + version / 100) for k in keys])
                await asyncio.sleep(0.02)
            got_a, got_b = await drain(a, 0.8), await drain(b, 0.8)
            windows = bridge.stats.windows - windows_before
    for got, wanted in ((got_a, keys[:3]), (got_b, keys[2:])):
        assert 0 < len(got) <= windows
        for message in got:
            assert message["type"] == "screener_ltp_batch_update"
            message_keys = [u["key"] for u in message["updates"]]
            assert len(message_keys) == len(set(message_keys))
            assert set(message_keys) <= set(wanted)
        last = {u["key"]: u["version"] for m in got for u in m["updates"]}
        assert last == dict.fromkeys(wanted, version)


async def test_snapshot_then_stream_has_no_gap_and_never_goes_back(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    key = "NSE_FNO:35001"
    async with ws_stack(redis_url, shards=1) as stack, bridged(stack, aredis, 0.1) as _:
        stop = asyncio.Event()
        final = 0

        async def ticker() -> None:
            nonlocal final
            while not stop.is_set():
                final += 1
                await publish(aredis, [update(key, final, 20000 + final / 20)])
                await asyncio.sleep(0.003)

        task = asyncio.create_task(ticker())
        try:
            await asyncio.sleep(0.35)  # mid-stream: the bridge has seen and stored values
            async with connect(stack.gateway.ws_url) as ws:
                await send_json(ws, {"action": "subscribe", "keys": [key]})
                snapshot = await recv_json(ws)
                await asyncio.sleep(0.5)
                stop.set()
                await task
                stream = await drain(ws, 0.6)
        finally:
            stop.set()
            await task
    assert snapshot["type"] == "snapshot"
    seen = [snapshot["prices"][key]["version"]] + [
        u["version"] for m in stream for u in m["updates"]]
    assert seen == sorted(set(seen)), "a version went back or repeated"
    assert seen[-1] == final, "the newest value never reached the client"
    assert stream[-1]["updates"][-1]["ltp"] == 20000 + final / 20
