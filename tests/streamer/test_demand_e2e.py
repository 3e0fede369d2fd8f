"""Viewer demand end to end: a WebSocket subscription (the registry's own scripts) reaches the
feed through the streamer (the simulator's wire), and the feed's capacity reaches the
subscriber as a refusal. Real Redis, real feed simulator."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from core.names import ROOM_KEY
from local.dhan_sim.feed import FeedSimulator, SimConfig
from realtime.registry import ConnectionRegistry
from streamer.service import Streamer
from tests.streamer.test_service import credentials, fast_settings, heartbeat, running, until


def on_wire(sim: FeedSimulator) -> set[str]:
    return {f"{seg}:{sid}" for subs in sim.subscriptions.values() for seg, sid in subs}


async def test_a_viewers_key_is_carried_then_dropped_after_the_grace(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=4)
    async with FeedSimulator(SimConfig(rate=500, seed=8)) as sim:
        # keys_refresh 30 s: only the subscribe's wake-up can bring the key in quickly.
        settings = fast_settings(redis_url, sim.url, keys="IDX_I:13", keys_refresh=30.0,
                                 demand_grace=0.5)
        async with running(Streamer(settings, redis=aredis, credentials=credentials())):
            await until(lambda: on_wire(sim) == {"IDX_I:13"})
            registry.connect("viewer", meta={})
            result = registry.subscribe("viewer", ["NSE_EQ:2885", "IDX_I:13"])
            assert result.added == ["NSE_EQ:2885", "IDX_I:13"] and result.refused == []
            await until(lambda: on_wire(sim) == {"IDX_I:13", "NSE_EQ:2885"}, timeout=5)
            await until(lambda: redis_client.get("ltp:NSE_EQ:2885") is not None)
            await until(lambda: heartbeat(redis_client).get("carried", {}).get("viewer_keys") == 2)
            registry.remove("viewer")  # the page went away; the key lingers, then goes
            redis_client.publish("market_stream:control", "{}")  # re-read now, not in 30 s
            await until(lambda: on_wire(sim) == {"IDX_I:13"})
            await until(lambda: heartbeat(redis_client).get("instruments") == 1)


async def test_a_key_the_feed_has_no_room_for_is_refused(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    async with FeedSimulator(SimConfig(rate=500, seed=9)) as sim:
        settings = fast_settings(redis_url, sim.url, keys="IDX_I:13,IDX_I:25",
                                 max_connections=1, per_connection=3)
        async with running(Streamer(settings, redis=aredis, credentials=credentials())):
            await until(lambda: redis_client.get(ROOM_KEY) == b"1")
            registry.connect("a", meta={})
            first = registry.subscribe("a", ["IDX_I:25", "NSE_EQ:1", "NSE_EQ:2"])
            assert first.added == ["IDX_I:25", "NSE_EQ:1"] and first.refused == ["NSE_EQ:2"]
            await until(lambda: on_wire(sim) == {"IDX_I:13", "IDX_I:25", "NSE_EQ:1"})
            registry.connect("b", meta={})
            assert registry.subscribe("b", ["NSE_EQ:3"]).refused == ["NSE_EQ:3"]
            assert registry.subscribe("b", ["NSE_EQ:1"]).added == ["NSE_EQ:1"]
            assert heartbeat(redis_client).get("rejected_keys") == 0
