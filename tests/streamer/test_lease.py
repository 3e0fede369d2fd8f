from __future__ import annotations

import asyncio
import logging

import pytest
import redis
import redis.asyncio as aioredis

from core.names import STREAMER_LEASE_KEY
from streamer.errors import LeaseLostError
from streamer.lease import Lease
from tests.streamer.support import cancel_and_wait


async def test_one_owner_at_a_time(aredis: aioredis.Redis, redis_client: redis.Redis) -> None:
    first = Lease(redis=aredis, owner="a", ttl=5)
    second = Lease(redis=aredis, owner="b", ttl=5)
    assert await first.try_acquire()
    assert not await second.try_acquire()
    assert redis_client.get(STREAMER_LEASE_KEY) == b"a"
    assert 0 < redis_client.pttl(STREAMER_LEASE_KEY) <= 5000
    assert await first.try_acquire()  # idempotent for the owner
    assert not await second.release()  # cannot release someone else's lease
    assert await first.release()
    assert redis_client.get(STREAMER_LEASE_KEY) is None
    assert await second.try_acquire()


async def test_the_second_instance_waits_and_says_so_then_takes_over(
    aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    first = Lease(redis=aredis, owner="a", ttl=0.3)
    second = Lease(redis=aredis, owner="b", ttl=0.3)
    assert await first.try_acquire()
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="streamer.lease"):
        waiter = asyncio.create_task(second.acquire(stop))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        async with asyncio.timeout(5):
            assert await waiter  # first never renewed: the lease expired
    assert "another streamer holds the lease market_stream:lease (a); waiting" in caplog.text
    assert await second.holder() == "b"


async def test_renewal_keeps_the_lease_and_a_waiter_can_be_stopped(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    owner = Lease(redis=aredis, owner="a", ttl=0.9)
    assert await owner.try_acquire()
    keeper = asyncio.create_task(owner.keep())
    other = Lease(redis=aredis, owner="b", ttl=0.9)
    stop = asyncio.Event()
    waiter = asyncio.create_task(other.acquire(stop))
    await asyncio.sleep(1.5)  # past the TTL: only renewals (every 0.3 s) keep it
    assert redis_client.get(STREAMER_LEASE_KEY) == b"a"
    stop.set()
    async with asyncio.timeout(5):
        assert not await waiter
    await cancel_and_wait(keeper)


async def test_losing_the_lease_is_an_error(aredis: aioredis.Redis,
                                            redis_client: redis.Redis) -> None:
    owner = Lease(redis=aredis, owner="a", ttl=0.3)
    assert await owner.try_acquire()
    redis_client.set(STREAMER_LEASE_KEY, "intruder", px=5000)
    with pytest.raises(LeaseLostError, match="intruder"):
        async with asyncio.timeout(5):
            await owner.keep()


async def test_an_expired_lease_is_taken_back_on_renewal(aredis: aioredis.Redis,
                                                         redis_client: redis.Redis) -> None:
    owner = Lease(redis=aredis, owner="a", ttl=5)
    assert await owner.try_acquire()
    redis_client.delete(STREAMER_LEASE_KEY)
    assert await owner.renew()
    assert redis_client.get(STREAMER_LEASE_KEY) == b"a"
