from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.backoff import Backoff
from core.messages import loads
from core.names import LIVE_LTP_CHANNEL
from streamer.coalescer import Coalescer
from streamer.sink import RedisSink
from tests.streamer.support import CuttableProxy, cancel_and_wait


def fast_backoff() -> Backoff:
    return Backoff(base=0.001, cap=0.002, rng=lambda: 1.0)


@pytest.fixture
async def proxy(redis_url: str, redis_client: redis.Redis) -> AsyncIterator[CuttableProxy]:
    proxy = await CuttableProxy(redis_url).start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def proxied(proxy: CuttableProxy) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(proxy.url, socket_connect_timeout=1, socket_timeout=1,
                                     retry=Retry(NoBackoff(), 0))
    try:
        yield client
    finally:
        await client.aclose()


async def next_message(pubsub: aioredis.client.PubSub, key: str) -> dict[str, Any]:
    """The next batch carrying `key` (Pub/Sub is server-wide: other publishers may talk)."""
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                batch: dict[str, Any] = loads(message["data"])
                if any(u["key"] == key for u in batch.get("updates", [])):
                    return batch


async def test_one_flush_sets_every_key_with_ttl_and_publishes_one_batch(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    coalescer = Coalescer(symbols={"NSE_EQ:987651333": "HDFCBANK"})
    sink = RedisSink(redis=aredis, coalescer=coalescer)
    async with aredis.pubsub() as pubsub:
        await pubsub.subscribe(LIVE_LTP_CHANNEL)
        coalescer.add(1, 987651333, 1600.1234, 10)
        coalescer.add(1, 987651333, 1601.5, 11)
        coalescer.add(0, 987650013, 22000.0, 11)
        assert await sink.flush()
        message = await next_message(pubsub, "NSE_EQ:987651333")
    assert redis_client.get("ltp:NSE_EQ:987651333") == b"1601.5"
    assert redis_client.get("ltp:IDX_I:987650013") == b"22000.0"
    assert 0 < redis_client.ttl("ltp:NSE_EQ:987651333") <= 30
    assert message["type"] == "screener_ltp_batch_update"
    updates = {u["key"]: u for u in message["updates"]}
    assert len(updates) == 2
    assert updates["NSE_EQ:987651333"]["ltp"] == 1601.5
    assert updates["NSE_EQ:987651333"]["symbol"] == "HDFCBANK"
    assert updates["IDX_I:987650013"]["security_id"] == "987650013"
    assert sink.written == 2 and sink.published == 1
    assert await sink.flush()  # nothing pending: nothing sent
    assert sink.published == 1


async def test_large_backlogs_go_out_in_chunks(aredis: aioredis.Redis,
                                               redis_client: redis.Redis) -> None:
    coalescer = Coalescer()
    sink = RedisSink(redis=aredis, coalescer=coalescer, max_batch=2)
    for sid in range(5):
        coalescer.add(1, sid, 1.0 + sid, 1)
    assert await sink.flush()
    assert sink.published == 3
    assert [redis_client.get(f"ltp:NSE_EQ:{i}") for i in range(5)] == [
        b"1.0", b"2.0", b"3.0", b"4.0", b"5.0"]


async def test_keeps_the_newest_value_per_key_while_redis_is_down(
    proxy: CuttableProxy, proxied: aioredis.Redis, redis_client: redis.Redis
) -> None:
    coalescer = Coalescer()
    sink = RedisSink(redis=proxied, coalescer=coalescer, backoff=fast_backoff())
    coalescer.add(1, 1, 10.0, 1)
    assert await sink.flush()
    await proxy.cut()
    coalescer.add(1, 1, 11.0, 2)
    coalescer.add(1, 2, 20.0, 2)
    assert not await sink.flush()
    assert sink.buffered == 2 and not sink.healthy and sink.errors == 1
    coalescer.add(1, 2, 21.0, 3)  # newer than what is buffered
    coalescer.add(1, 3, 30.0, 3)
    assert not await sink.flush()
    assert sink.buffered == 3
    await proxy.restore()
    assert await sink.flush()
    assert sink.healthy and sink.buffered == 0
    assert [redis_client.get(f"ltp:NSE_EQ:{i}") for i in (1, 2, 3)] == [b"11.0", b"21.0", b"30.0"]
    assert sink.stats()["errors"] == 2


async def test_the_buffer_is_bounded(proxy: CuttableProxy, proxied: aioredis.Redis) -> None:
    coalescer = Coalescer()
    sink = RedisSink(redis=proxied, coalescer=coalescer, buffer_max=3, backoff=fast_backoff())
    await proxy.cut()
    for sid in range(5):
        coalescer.add(1, sid, 1.0, 1)
    assert not await sink.flush()
    assert sink.buffered == 3 and sink.dropped == 2


async def test_run_loop_flushes_and_recovers(
    proxy: CuttableProxy, proxied: aioredis.Redis, redis_client: redis.Redis
) -> None:
    coalescer = Coalescer()
    sink = RedisSink(redis=proxied, coalescer=coalescer, interval=0.001,
                     backoff=fast_backoff())
    task = asyncio.create_task(sink.run())
    try:
        await proxy.cut()
        coalescer.add(1, 7, 70.0, 1)
        async with asyncio.timeout(5):
            while sink.errors == 0:
                await asyncio.sleep(0.005)
        await proxy.restore()
        async with asyncio.timeout(5):
            # Healthy too: under load one attempt can time out after Redis applied it.
            while redis_client.get("ltp:NSE_EQ:7") != b"70.0" or not sink.healthy:
                await asyncio.sleep(0.005)
    finally:
        await cancel_and_wait(task)
    assert sink.buffered == 0
