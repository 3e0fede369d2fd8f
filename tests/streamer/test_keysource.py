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
from core.names import CONTROL_CHANNEL, INSTRUMENT_SYMBOLS_KEY, stream_key
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
