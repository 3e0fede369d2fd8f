"""The whole streamer against the DhanHQ simulator and a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from core.instruments import InstrumentKey
from core.messages import IST, loads
from core.names import (
    CONTROL_CHANNEL,
    HEARTBEAT_KEY,
    LIVE_LTP_CHANNEL,
    STREAMER_LEASE_KEY,
    stream_key,
)
from local.dhan_sim.feed import FeedSimulator, SimConfig
from streamer.connection import State
from streamer.market_hours import MarketHours
from streamer.service import Streamer
from streamer.settings import CredentialSource, Settings, load_settings

CLIENT = "1000000001"


def fast_settings(redis_url: str, feed_url: str, **overrides: Any) -> Settings:
    env = {
        "REDIS_URL": redis_url,
        "DHAN_FEED_URL": feed_url,
        "STREAMER_FLUSH_INTERVAL_MS": "2",
        "STREAMER_SILENCE_TIMEOUT_S": "60",
        "STREAMER_ALWAYS_OPEN": "true",
        "STREAMER_BACKOFF_BASE_S": "0.005",
        "STREAMER_BACKOFF_MAX_S": "0.02",
        "STREAMER_BACKOFF_LONG_S": "0.05",
        "STREAMER_HEARTBEAT_S": "0.05",
        "STREAMER_LEASE_TTL_S": "1",
        "STREAMER_KEYS_REFRESH_S": "0.2",
    }
    keys = overrides.pop("keys", None)
    env.update({k: str(v) for k, v in overrides.pop("env", {}).items()})
    settings = load_settings(env, keys=keys)
    return dataclasses.replace(settings, **overrides)


def credentials(env: dict[str, str] | None = None) -> CredentialSource:
    return CredentialSource(environ=env if env is not None else {
        "DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": "sim-token"})


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@asynccontextmanager
async def running(streamer: Streamer) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.create_task(streamer.run())
    try:
        yield task
    finally:
        streamer.request_stop("test over")
        async with asyncio.timeout(10):
            await task


def keys_csv(n: int, start: int = 1, segment: str = "NSE_EQ") -> str:
    return ",".join(f"{segment}:{i}" for i in range(start, start + n))


def expected_prices(sim: FeedSimulator) -> dict[str, float]:
    return {f"ltp:{seg}:{sid}": round(ltp, 2) for (seg, sid), (ltp, _ltt) in
            sim.last_sent.items()}


def redis_prices(client: redis.Redis, names: list[str]) -> dict[str, float | None]:
    values = client.mget(names) if names else []
    return {n: (float(v) if v is not None else None) for n, v in zip(names, values,
                                                                       strict=True)}


def instrument_counts(sim: FeedSimulator) -> list[int]:
    return [r.message["InstrumentCount"] for r in sim.requests
            if isinstance(r.message, dict) and "InstrumentCount" in r.message]


def heartbeat(client: redis.Redis) -> dict[str, Any]:
    raw = client.get(HEARTBEAT_KEY)
    return loads(raw) if raw else {}


@pytest.mark.parametrize("per_frame", [1, 100])
async def test_redis_ends_with_the_newest_price_of_every_key(
    per_frame: int, redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    config = SimConfig(rate=20_000, packets_per_frame=per_frame, seed=per_frame,
                       max_ticks=3_000)
    async with FeedSimulator(config) as sim:
        # Ids of our own: Pub/Sub is server-wide, so other tests' publishers may be heard too.
        base = random.randrange(1_000_000, 4_000_000_000)
        settings = fast_settings(redis_url, sim.url,
                                 keys=keys_csv(150, start=base) + f",IDX_I:{base}")
        streamer = Streamer(settings, redis=aredis, credentials=credentials())
        async with aredis.pubsub() as pubsub:
            await pubsub.subscribe(LIVE_LTP_CHANNEL)
            ack = await pubsub.get_message(timeout=5)
            assert ack is not None and ack["type"] == "subscribe"
            async with running(streamer):
                # max_ticks: the feed goes quiet after 3,000 price packets (+ the snapshot
                # packet of each key on subscribe); the cache must then hold the last of each.
                await until(lambda: sim.ticks_sent >= 3_000)
                expected = expected_prices(sim)
                assert len(expected) == 151
                names = sorted(expected)
                await until(lambda: redis_prices(redis_client, names) == expected)
                assert all(0 < redis_client.ttl(n) <= 30 for n in names)
            batches = []
            while message := await pubsub.get_message(ignore_subscribe_messages=True,
                                                      timeout=0.1):
                batches.append(loads(message["data"]))
    assert batches and all(b["type"] == "screener_ltp_batch_update" for b in batches)
    last_seen: dict[str, tuple[int, float]] = {}
    for batch in batches:
        for update in batch["updates"]:
            if f"ltp:{update['key']}" not in expected:
                continue
            previous = last_seen.get(update["key"])
            assert previous is None or update["version"] > previous[0]
            last_seen[update["key"]] = (update["version"], update["ltp"])
    assert {f"ltp:{k}": v[1] for k, v in last_seen.items()} == expected
    assert max(instrument_counts(sim)) <= 100
    assert streamer.sink.errors == 0


async def test_shards_over_connections_and_reports_rejected_keys(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    async with FeedSimulator(SimConfig(rate=2_000, packets_per_frame=10, seed=3)) as sim:
        settings = fast_settings(redis_url, sim.url, keys=keys_csv(330),
                                 max_connections=3, per_connection=110)
        streamer = Streamer(settings, redis=aredis, credentials=credentials())
        async with running(streamer):
            await until(lambda: sim.connection_count == 3 and sum(
                len(s) for s in sim.subscriptions.values()) == 330)
            assert sorted(len(s) for s in sim.subscriptions.values()) == [110, 110, 110]
            await until(lambda: heartbeat(redis_client).get("connected") == 3)
        beat = heartbeat(redis_client)
        assert beat["instruments"] == 330 and beat["rejected_keys"] == 0
        assert max(instrument_counts(sim)) <= 100

        over = fast_settings(redis_url, sim.url, keys=keys_csv(250, start=1000),
                             max_connections=2, per_connection=100)
        streamer = Streamer(over, redis=aredis, credentials=credentials())
        async with running(streamer):
            await until(lambda: heartbeat(redis_client).get("rejected_keys") == 50)
            beat = heartbeat(redis_client)
            assert beat["instruments"] == 200
            assert beat["rejected_sample"][0] == "NSE_EQ:1200"


async def test_follows_streams_live(redis_url: str, redis_client: redis.Redis,
                                    aredis: aioredis.Redis) -> None:
    def register(name: str, keys: list[str]) -> None:
        redis_client.set(stream_key(name), json.dumps({"name": name, "keys": keys}), ex=3600)
        redis_client.publish(CONTROL_CHANNEL, json.dumps({"type": "streams_changed",
                                                          "name": name}))

    def on_wire() -> set[str]:
        return {f"{seg}:{sid}" for subs in sim.subscriptions.values() for seg, sid in subs}

    register("early", ["NSE_EQ:2885"])
    async with FeedSimulator(SimConfig(rate=1_000, seed=4)) as sim:
        settings = fast_settings(redis_url, sim.url, keys="IDX_I:13",
                                 keys_refresh=30.0)  # only the control channel can be quick
        streamer = Streamer(settings, redis=aredis, credentials=credentials())
        async with running(streamer):
            await until(lambda: on_wire() == {"IDX_I:13", "NSE_EQ:2885"})
            register("swing", ["NSE_EQ:1333", "NSE_EQ:11536", "NSE_EQ:bogus"])
            await until(lambda: on_wire() == {"IDX_I:13", "NSE_EQ:2885", "NSE_EQ:1333",
                                              "NSE_EQ:11536"})
            await until(lambda: redis_client.get("ltp:NSE_EQ:11536") is not None)
            redis_client.delete(stream_key("early"))
            redis_client.publish(CONTROL_CHANNEL, json.dumps({"type": "streams_changed"}))
            await until(lambda: on_wire() == {"IDX_I:13", "NSE_EQ:1333", "NSE_EQ:11536"})
            await until(lambda: heartbeat(redis_client).get("instruments") == 3)
            assert heartbeat(redis_client)["errors"]["invalid_keys"] >= 1
            assert sim.connection_count == 1
            codes = [r.message["RequestCode"] for r in sim.requests]  # type: ignore[index]
            assert 18 in codes  # the removed key was unsubscribed


async def test_no_keys_means_no_connection_until_a_stream_arrives(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    async with FeedSimulator(SimConfig(rate=1_000, seed=5)) as sim:
        streamer = Streamer(fast_settings(redis_url, sim.url), redis=aredis,
                            credentials=credentials())
        async with running(streamer):
            await until(lambda: heartbeat(redis_client).get("state") == "idle")
            assert sim.handshakes == 0
            redis_client.set(stream_key("s"), json.dumps({"keys": ["NSE_EQ:7"]}))
            redis_client.publish(CONTROL_CHANNEL, "{}")
            await until(lambda: redis_client.get("ltp:NSE_EQ:7") is not None)
            redis_client.delete(stream_key("s"))
            redis_client.publish(CONTROL_CHANNEL, "{}")
            # The last key left: the connection says goodbye and closes.
            await until(lambda: sim.connection_count == 0 and not streamer.connections)
            assert {"RequestCode": 12} in [r.message for r in sim.requests]


async def test_faults_leave_it_running_and_correct(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    env = {"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": "sim-token"}
    async with FeedSimulator(SimConfig(rate=2_000, packets_per_frame=5, seed=6)) as sim:
        settings = fast_settings(redis_url, sim.url, keys=keys_csv(120),
                                 silence_timeout=0.3)
        streamer = Streamer(settings, redis=aredis, credentials=credentials(env))

        def ticks() -> int:
            return streamer.coalescer.ticks

        async def flowing() -> None:
            await until(lambda: sim.connection_count == 1 and streamer.connections[0].state
                        is State.CONNECTED)
            before = ticks()
            await until(lambda: ticks() > before + 20)

        def failures(kind: str) -> int:
            return int(heartbeat(redis_client).get("errors", {}).get("feed_by_kind", {})
                       .get(kind, 0))

        async with running(streamer) as task:
            await flowing()
            await sim.drop_connections()
            await until(lambda: failures("closed") >= 1)
            await flowing()

            sim.mute(True)
            await until(lambda: failures("silence") >= 1)
            sim.mute(False)
            await flowing()

            await sim.send_disconnect(805)
            await until(lambda: failures("disconnect") >= 1)
            await flowing()

            sim.reject_handshakes(status=429, count=2)
            await sim.drop_connections()
            await until(lambda: failures("handshake") >= 2)
            await flowing()

            sim.set_token("rotated")
            env["DHAN_ACCESS_TOKEN"] = "rotated"
            await sim.send_disconnect(807)
            await until(lambda: streamer.tokens.refreshes >= 2)
            await flowing()

            # After all that, the cache still converges on what the feed sent last.
            sim.mute(True)
            await asyncio.sleep(0.05)
            expected = expected_prices(sim)
            names = sorted(expected)
            await until(lambda: redis_prices(redis_client, names) == expected)
            sim.mute(False)

            await sim.send_disconnect(809)
            await until(lambda: streamer.connections[0].state is State.STOPPED)
            await until(lambda: "809" in str(heartbeat(redis_client)["errors"]["last_fatal"]))
            beat = heartbeat(redis_client)
            assert beat["connections"][0]["state"] == "stopped"
            assert beat["connected"] == 0
            assert not task.done()  # the service itself keeps running (heartbeat, registry)
            stamp = beat["time"]
            await until(lambda: heartbeat(redis_client)["time"] != stamp)
        assert max(instrument_counts(sim)) <= 100


async def test_a_second_streamer_waits_for_the_lease(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture
) -> None:
    async with FeedSimulator(SimConfig(rate=1_000, seed=7)) as sim:
        first = Streamer(fast_settings(redis_url, sim.url, keys="NSE_EQ:1", instance_id="one"),
                         redis=aredis, credentials=credentials())
        second = Streamer(fast_settings(redis_url, sim.url, keys="NSE_EQ:1",
                                        instance_id="two"),
                          redis=aredis, credentials=credentials())
        async with running(first):
            await until(lambda: heartbeat(redis_client).get("instance_id") == "one")
            async with running(second):
                await until(lambda: "another streamer holds the lease" in caplog.text)
                assert second.state == "waiting_for_lease" and sim.connection_count == 1
                first.request_stop("handing over")
                await until(lambda: second.state == "running", timeout=10)
                await until(lambda: heartbeat(redis_client).get("instance_id") == "two")
                assert redis_client.get(STREAMER_LEASE_KEY) == b"two"
        assert redis_client.get(STREAMER_LEASE_KEY) is None


async def test_losing_the_lease_stops_writing(redis_url: str, redis_client: redis.Redis,
                                              aredis: aioredis.Redis) -> None:
    async with FeedSimulator(SimConfig(rate=1_000, seed=8)) as sim:
        streamer = Streamer(fast_settings(redis_url, sim.url, keys="NSE_EQ:1",
                                          instance_id="one", lease_ttl=0.3),
                            redis=aredis, credentials=credentials())
        task = asyncio.create_task(streamer.run())
        await until(lambda: streamer.state == "running")
        redis_client.set(STREAMER_LEASE_KEY, "usurper", px=10_000)
        async with asyncio.timeout(10):
            assert await task == 1
        assert redis_client.get(STREAMER_LEASE_KEY) == b"usurper"
        assert streamer.stop_reason == "lease lost"


async def test_stops_by_itself_after_the_close(redis_url: str, redis_client: redis.Redis,
                                               aredis: aioredis.Redis) -> None:
    # A Monday, 0.3 s before close (15:30) + grace (10 min), on a clock that moves.
    start = datetime(2025, 1, 6, 15, 39, 59, 700_000, tzinfo=IST)
    t0 = time.monotonic()

    def now() -> datetime:
        return start + timedelta(seconds=time.monotonic() - t0)

    async with FeedSimulator(SimConfig(rate=1_000, seed=9)) as sim:
        settings = fast_settings(redis_url, sim.url, keys="NSE_EQ:1",
                                 hours=MarketHours(grace=timedelta(minutes=10)))
        streamer = Streamer(settings, redis=aredis, credentials=credentials(), now=now)
        async with asyncio.timeout(10):
            assert await streamer.run() == 0
        assert streamer.stop_reason == "market closed"
        assert {"RequestCode": 12} in [r.message for r in sim.requests]
        assert heartbeat(redis_client)["state"] == "stopped"
        assert redis_client.get(STREAMER_LEASE_KEY) is None


async def test_shutdown_flushes_what_is_pending(redis_url: str, redis_client: redis.Redis,
                                                aredis: aioredis.Redis) -> None:
    async with FeedSimulator(SimConfig(rate=500, seed=10)) as sim:
        # A flush interval far beyond the test: only the shutdown flush can write.
        settings = fast_settings(redis_url, sim.url, keys="NSE_EQ:1,NSE_EQ:2",
                                 flush_interval=3600.0)
        streamer = Streamer(settings, redis=aredis, credentials=credentials())
        async with running(streamer):
            await until(lambda: streamer.sink.flushes == 0 and streamer.coalescer.pending == 2)
            assert redis_client.get("ltp:NSE_EQ:1") is None
        assert redis_client.get("ltp:NSE_EQ:1") is not None
        assert redis_client.get("ltp:NSE_EQ:2") is not None


def test_keys_are_parsed_once() -> None:
    settings = fast_settings("redis://x", "ws://y", keys="NSE_EQ:1,NSE_EQ:01")
    assert settings.keys == (InstrumentKey("NSE_EQ", "1"),)


async def test_pings_are_answered_while_ingesting_flat_out(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    # The simulator pings every 0.1 s and drops a client silent for 2 s, while replaying
    # 100-packet frames as fast as it can: a blocked event loop would lose the connection.
    config = SimConfig(rate=0, packets_per_frame=100, seed=11, ping_interval=0.1,
                       ping_timeout=2.0)
    async with FeedSimulator(config) as sim:
        settings = fast_settings(redis_url, sim.url, keys=keys_csv(500, start=7_000_000))
        streamer = Streamer(settings, redis=aredis, credentials=credentials())
        async with running(streamer):
            await until(lambda: streamer.coalescer.ticks > 0)
            started = time.monotonic()
            await until(lambda: time.monotonic() - started > 2.5, timeout=20)
            assert streamer.sink.flushes > 10
        assert sim.handshakes == 1
        assert [c.reconnects for c in streamer.connections.values()] == [0]
        assert streamer.coalescer.ticks > 10_000
