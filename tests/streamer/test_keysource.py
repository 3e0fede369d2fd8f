from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.backoff import Backoff
from core.instruments import InstrumentKey
from core.names import (
    CARRIAGE_TTL_SECONDS,
    CARRIED_KEY,
    CONTROL_CHANNEL,
    DEMAND_KEY,
    INSTRUMENT_SYMBOLS_KEY,
    REJECTED_KEY,
    ROOM_KEY,
    stream_key,
)
from streamer.keysource import DesiredKeys, KeySource
from tests.streamer.support import CuttableProxy, cancel_and_wait

K = InstrumentKey


def register(client: redis.Redis, name: str, keys: list[str], announce: bool = False) -> None:
    client.set(stream_key(name), json.dumps({"name": name, "keys": keys, "mode": "quote"}),
               ex=3600)
    if announce:
        client.publish(CONTROL_CHANNEL, json.dumps({"type": "streams_changed", "name": name}))


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_reads_static_keys_and_every_stream(
    aredis: aioredis.Redis, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    register(redis_client, "b_swing", ["NSE_EQ:2885", "NSE_EQ:1333", "NSE_EQ:bad"])
    register(redis_client, "a_long", ["IDX_I:13", "NSE_EQ:1333"])
    redis_client.set(stream_key("broken"), "not json")
    redis_client.set("websocket_streamish", json.dumps({"keys": ["NSE_EQ:9"]}))
    redis_client.hset(INSTRUMENT_SYMBOLS_KEY, mapping={"NSE_EQ:2885": "RELIANCE"})
    source = KeySource(redis=aredis, on_change=lambda _: None,
                       static_keys=[K("BSE_EQ", "500325")])
    with caplog.at_level(logging.WARNING, logger="streamer.keysource"):
        desired = await source.read()
        await source.read()
    assert desired.keys == (K("BSE_EQ", "500325"), K("IDX_I", "13"), K("NSE_EQ", "1333"),
                            K("NSE_EQ", "2885"))
    assert desired.symbols == {"NSE_EQ:2885": "RELIANCE"}
    assert desired.streams == 2
    assert source.invalid == 2
    assert caplog.text.count("NSE_EQ:bad") == 1  # reported once, not every re-read
    assert "'websocket_stream:broken' is not a JSON object" in caplog.text


async def test_follows_the_control_channel_and_the_periodic_refresh(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    seen: list[DesiredKeys] = []
    source = KeySource(redis=aredis, on_change=seen.append, static_keys=[K("NSE_EQ", "1")],
                       refresh=30)
    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: source.reads >= 1)
        assert seen[-1].keys == (K("NSE_EQ", "1"),)
        register(redis_client, "s", ["NSE_EQ:2"], announce=True)
        await wait_for(lambda: seen[-1].keys == (K("NSE_EQ", "1"), K("NSE_EQ", "2")))
        redis_client.delete(stream_key("s"))
        redis_client.publish(CONTROL_CHANNEL, "anything")
        await wait_for(lambda: seen[-1].keys == (K("NSE_EQ", "1"),))
        source.refresh = 0.02  # next wait uses it: an unannounced change still lands
        redis_client.publish(CONTROL_CHANNEL, "wake")
        register(redis_client, "quiet", ["NSE_EQ:3"])
        await wait_for(lambda: K("NSE_EQ", "3") in seen[-1].keys)
    finally:
        await cancel_and_wait(task)


@pytest.fixture
async def proxied(redis_url: str, redis_client: redis.Redis
                  ) -> AsyncIterator[tuple[CuttableProxy, aioredis.Redis]]:
    proxy = await CuttableProxy(redis_url).start()
    client = aioredis.Redis.from_url(proxy.url, socket_connect_timeout=1, socket_timeout=1,
                                     retry=Retry(NoBackoff(), 0))
    try:
        yield proxy, client
    finally:
        await client.aclose()
        await proxy.close()


async def test_keeps_the_last_keys_while_redis_is_down(
    proxied: tuple[CuttableProxy, aioredis.Redis], redis_client: redis.Redis
) -> None:
    proxy, client = proxied
    register(redis_client, "s", ["NSE_EQ:5"])
    seen: list[DesiredKeys] = []
    source = KeySource(redis=client, on_change=seen.append, refresh=0.02,
                       backoff=Backoff(base=0.01, cap=0.02))
    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: bool(seen) and seen[-1].keys == (K("NSE_EQ", "5"),))
        await proxy.cut()
        await wait_for(lambda: source.errors >= 2)
        assert seen[-1].keys == (K("NSE_EQ", "5"),)
        register(redis_client, "t", ["NSE_EQ:6"])
        await proxy.restore()
        await wait_for(lambda: seen[-1].keys == (K("NSE_EQ", "5"), K("NSE_EQ", "6")))
    finally:
        await cancel_and_wait(task)


async def test_stream_records_in_other_writers_shapes_are_read(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    redis_client.set(stream_key("list"), json.dumps(["NSE_EQ:2885"]))
    redis_client.set(stream_key("csv_field"), json.dumps({"keys": "NSE_EQ:1333, IDX_I:13"}))
    redis_client.set(stream_key("plain"), "NSE_EQ:11536,NSE_EQ:1594")
    redis_client.set(stream_key("junk"), "not a stream")
    source = KeySource(redis=aredis, on_change=lambda _: None)
    desired = await source.read()
    assert set(desired.keys) == {K("NSE_EQ", "2885"), K("NSE_EQ", "1333"), K("IDX_I", "13"),
                                 K("NSE_EQ", "11536"), K("NSE_EQ", "1594")}
    assert desired.streams == 3


async def test_non_string_items_are_counted_and_reported(
    aredis: aioredis.Redis, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.set(stream_key("mixed"), json.dumps({"keys": ["NSE_EQ:1", 5, None, "x"]}))
    # JSON-quoted text without a ':' is no stream record (as the same text unquoted).
    redis_client.set(stream_key("quoted"), json.dumps("not a stream"))
    source = KeySource(redis=aredis, on_change=lambda _: None)
    with caplog.at_level(logging.WARNING, logger="streamer.keysource"):
        desired = await source.read()
    assert desired.keys == (K("NSE_EQ", "1"),)
    assert desired.streams == 1
    assert source.invalid == 3
    assert "skipping key in 'websocket_stream:mixed': 5 is not a string" in caplog.text
    assert "skipping key in 'websocket_stream:mixed': None is not a string" in caplog.text
    assert "'websocket_stream:quoted' is not a JSON object" in caplog.text


async def test_a_stream_name_that_is_not_utf8_is_still_read(
    aredis: aioredis.Redis, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.set(stream_key("ok").encode() + b"\xff", json.dumps({"keys": ["NSE_EQ:9", 1]}))
    redis_client.hset(INSTRUMENT_SYMBOLS_KEY, mapping={"NSE_EQ:9": "NINE"})
    source = KeySource(redis=aredis, on_change=lambda _: None)
    with caplog.at_level(logging.WARNING, logger="streamer.keysource"):
        desired = await source.read()
    assert desired.keys == (K("NSE_EQ", "9"),)
    assert desired.symbols == {"NSE_EQ:9": "NINE"}
    assert "'websocket_stream:ok\ufffd'" in caplog.text


def demand_for(client: redis.Redis, counts: dict[str, int]) -> None:
    client.delete(DEMAND_KEY)
    if counts:
        client.hset(DEMAND_KEY, mapping=counts)


async def test_priority_is_configured_then_streams_then_demand_by_viewers(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    register(redis_client, "s", ["NSE_EQ:20", "NSE_EQ:21"])
    demand_for(redis_client, {"NSE_EQ:30": 1, "NSE_EQ:31": 7, "NSE_EQ:21": 3, "NSE_EQ:1": 2,
                              "NSE_EQ:x": 4, "NSE_EQ:32": 7})
    source = KeySource(redis=aredis, on_change=lambda _: None, static_keys=[K("NSE_EQ", "1")],
                       capacity=5)
    desired = await source.read()
    assert [str(k) for k in desired.keys] == ["NSE_EQ:1", "NSE_EQ:20", "NSE_EQ:21",
                                              "NSE_EQ:31", "NSE_EQ:32", "NSE_EQ:30"]
    assert desired.demand == 5 and desired.streams == 1
    assert source.invalid == 1  # the unparsable demand entry, skipped
    await source.publish(desired)
    carried = {m.decode() for m in redis_client.smembers(CARRIED_KEY)}
    assert carried == {"NSE_EQ:1", "NSE_EQ:20", "NSE_EQ:21", "NSE_EQ:31", "NSE_EQ:32"}
    assert redis_client.smembers(REJECTED_KEY) == {b"NSE_EQ:30"}
    assert redis_client.get(ROOM_KEY) == b"0"
    assert 0 < redis_client.ttl(CARRIED_KEY) <= CARRIAGE_TTL_SECONDS


async def test_a_key_nobody_watches_lingers_for_the_grace_then_goes(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    clock = [1000.0]
    source = KeySource(redis=aredis, on_change=lambda _: None, grace=60, capacity=10,
                       clock=lambda: clock[0])
    demand_for(redis_client, {"NSE_EQ:1": 1, "NSE_EQ:2": 1})
    await source.read()
    demand_for(redis_client, {"NSE_EQ:2": 1})  # a page reload: its viewer left
    clock[0] += 1
    desired = await source.read()
    assert set(desired.keys) == {K("NSE_EQ", "1"), K("NSE_EQ", "2")}
    assert desired.lingering == {K("NSE_EQ", "1")}
    await source.publish(desired)
    assert redis_client.get(ROOM_KEY) == b"9"  # a lingering key gives way to new demand
    clock[0] += 30
    demand_for(redis_client, {"NSE_EQ:2": 1, "NSE_EQ:1": 1})  # ... and came back in time
    assert (await source.read()).lingering == frozenset()
    demand_for(redis_client, {"NSE_EQ:2": 1})
    await source.read()
    clock[0] += 59
    assert K("NSE_EQ", "1") in (await source.read()).keys
    clock[0] += 2
    assert (await source.read()).keys == (K("NSE_EQ", "2"),)


async def test_a_stopped_streams_keys_go_at_once_and_running_streams_are_kept_alive(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    source = KeySource(redis=aredis, on_change=lambda _: None, grace=600)
    register(redis_client, "s", ["NSE_EQ:1"])
    redis_client.expire(stream_key("s"), 5)
    assert (await source.read()).keys == (K("NSE_EQ", "1"),)
    assert redis_client.ttl(stream_key("s")) > 3000  # a running streamer refreshes it
    redis_client.delete(stream_key("s"))
    assert (await source.read()).keys == ()


async def test_a_wiped_cache_gets_its_streams_back(
    aredis: aioredis.Redis, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    source = KeySource(redis=aredis, on_change=lambda _: None, grace=600, capacity=10)
    register(redis_client, "s", ["NSE_EQ:1", "NSE_EQ:2"])
    demand_for(redis_client, {"NSE_EQ:3": 1})
    await source.publish(await source.read())
    record = redis_client.get(stream_key("s"))
    redis_client.delete(stream_key("s"))  # gone without the cache being wiped: stays gone
    assert K("NSE_EQ", "1") not in (await source.read()).keys
    register(redis_client, "s", ["NSE_EQ:1", "NSE_EQ:2"])
    await source.publish(await source.read())
    redis_client.flushdb()
    with caplog.at_level(logging.WARNING, logger="streamer.keysource"):
        desired = await source.read()
    assert source.wipes == 1 and "restoring 1 streams" in caplog.text
    assert redis_client.get(stream_key("s")) == record
    assert 0 < redis_client.ttl(stream_key("s")) <= 3600
    # The viewers' keys are kept while their pages reconnect and subscribe again.
    assert [str(k) for k in desired.keys] == ["NSE_EQ:1", "NSE_EQ:2", "NSE_EQ:3"]
    await source.publish(desired)
    assert redis_client.scard(CARRIED_KEY) == 3
