"""A key a viewer was given and the feed later drops: the viewer is told, never left frozen.

Streamer key source (capacity 3) -> `market_stream:rejected` -> relay bridge -> fan-out ->
local API Gateway -> WebSocket client, all real, on one Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import redis
import redis.asyncio as aioredis

from core import names
from core.instruments import InstrumentKey
from streamer.keysource import KeySource
from tests.realtime_support import connect, drain, recv_json, request, update, wait_for, ws_stack
from tests.relay.test_bridge_e2e import bridged, publish

VIEWED = ["NSE_EQ:101", "NSE_EQ:102"]
STREAMED = ["NSE_EQ:201", "NSE_EQ:202"]


def carried(client: redis.Redis) -> set[str]:
    return {m.decode() for m in client.smembers(names.CARRIED_KEY)}


async def test_a_viewer_key_pushed_out_by_a_stream_gets_not_carried_and_is_unsubscribed(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    source = KeySource(redis=aredis, on_change=lambda _: None, capacity=3, refresh=0.05)
    feed = asyncio.create_task(source.run())
    try:
        async with ws_stack(redis_url, shards=1) as stack, bridged(stack, aredis, 0.1) as _:
            await wait_for(lambda: redis_client.get(names.ROOM_KEY) == b"3")
            async with connect(stack.gateway.ws_url) as ws:
                reply = await request(ws, {"action": "subscribe", "keys": VIEWED})
                assert reply["type"] == "snapshot"
                await wait_for(lambda: carried(redis_client) == set(VIEWED))

                # A named stream outranks viewer demand: one viewed key no longer fits.
                redis_client.set(names.stream_key("grown"), json.dumps(
                    {"name": "grown", "keys": STREAMED, "mode": "quote"}), ex=3600)
                redis_client.publish(names.CONTROL_CHANNEL, json.dumps(
                    {"type": "streams_changed", "name": "grown"}))
                notice = await recv_json(ws, timeout=5)
                assert notice["type"] == "error"
                assert notice["code"] == "not_carried"
                assert notice["keys"] == [VIEWED[1]]
                assert VIEWED[1] in notice["reason"]

                # Unsubscribed: no demand left for it, so the feed stops refusing it too.
                await wait_for(lambda: redis_client.hget(names.DEMAND_KEY, VIEWED[1]) is None)
                await wait_for(lambda: redis_client.scard(names.REJECTED_KEY) == 0)
                assert carried(redis_client) == {*STREAMED, VIEWED[0]}

                # The key it kept still streams; the dropped one is not sent, and the notice
                # is not repeated window after window.
                await publish(aredis, [update(VIEWED[0], 5, 10.5), update(VIEWED[1], 5, 20.5)])
                got = await drain(ws, 0.6)
                assert [m["type"] for m in got] == ["screener_ltp_batch_update"]
                assert [u["key"] for u in got[0]["updates"]] == [VIEWED[0]]
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
    assert source.current is not None
    assert InstrumentKey("NSE_EQ", "102") not in source.current.keys
