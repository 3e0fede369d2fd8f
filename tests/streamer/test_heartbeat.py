from __future__ import annotations

import asyncio
import itertools

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.messages import loads
from core.names import HEARTBEAT_KEY
from streamer.heartbeat import Heartbeat, Snapshot
from tests.streamer.support import cancel_and_wait


def snapshot(ticks: int) -> Snapshot:
    return Snapshot(
        instance_id="i-1", state="running", mode="quote",
        connections=[{"index": 0, "state": "connected", "last_error": None},
                     {"index": 1, "state": "stopped", "last_error": "809"}],
        instruments=2, ticks=ticks, last_tick_age=0.12345,
        errors={"feed": 1, "last_fatal": "809"}, redis_buffer=3,
        rejected=[f"NSE_EQ:{i}" for i in range(30)],
    )


async def test_beat_writes_the_document_with_a_ttl(aredis: aioredis.Redis,
                                                   redis_client: redis.Redis) -> None:
    ticks = iter([100, 400])
    clock = itertools.count(0.0, 2.0).__next__
    beat = Heartbeat(redis=aredis, snapshot=lambda: snapshot(next(ticks)), interval=10,
                     clock=clock)
    assert await beat.beat()
    assert await beat.beat()
    document = loads(redis_client.get(HEARTBEAT_KEY) or b"")
    assert 0 < redis_client.ttl(HEARTBEAT_KEY) <= 60
    assert document["instance_id"] == "i-1" and document["state"] == "running"
    assert document["connected"] == 1 and len(document["connections"]) == 2
    assert document["ticks"] == 400 and document["ticks_per_second"] == 150.0
    assert document["last_tick_age_s"] == 0.123
    assert document["errors"]["last_fatal"] == "809"
    assert document["redis_buffer"] == 3
    assert document["rejected_keys"] == 30 and len(document["rejected_sample"]) == 20
    assert document["time"].endswith("Z")


async def test_run_refreshes(aredis: aioredis.Redis, redis_client: redis.Redis) -> None:
    count = itertools.count()
    beat = Heartbeat(redis=aredis, snapshot=lambda: snapshot(next(count)), interval=0.01)
    task = asyncio.create_task(beat.run())
    try:
        async with asyncio.timeout(5):
            while (raw := redis_client.get(HEARTBEAT_KEY)) is None or loads(raw)["ticks"] < 3:
                await asyncio.sleep(0.01)
    finally:
        await cancel_and_wait(task)


async def test_redis_errors_are_counted_not_raised() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5,
                            retry=Retry(NoBackoff(), 0))
    beat = Heartbeat(redis=client, snapshot=lambda: snapshot(0), interval=1)
    try:
        assert not await beat.beat()
        assert beat.failures == 1
    finally:
        await client.aclose()


def test_interval_must_leave_room_in_the_ttl() -> None:
    with pytest.raises(ValueError):
        Heartbeat(redis=aioredis.Redis(), snapshot=lambda: snapshot(0), interval=31)


async def test_each_written_beat_prints_one_emf_record(aredis: aioredis.Redis) -> None:
    lines: list[bytes] = []
    ticks = iter([100, 400])
    beat = Heartbeat(redis=aredis, snapshot=lambda: snapshot(next(ticks)), interval=10,
                     emit=lines.append)
    assert await beat.beat() and await beat.beat()
    records = [loads(line) for line in lines]
    assert [r["Ticks"] for r in records] == [100, 300]
    assert all(r["Heartbeats"] == 1 and r["service"] == "streamer" for r in records)
    directive = records[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "LtpStream" and directive["Dimensions"] == [["service"]]
    assert {m["Name"] for m in directive["Metrics"]} == {
        "Heartbeats", "Ticks", "LastTickAgeSeconds"}
    assert records[0]["LastTickAgeSeconds"] == 0.123


async def test_a_beat_that_misses_redis_is_not_counted_as_a_heartbeat() -> None:
    lines: list[bytes] = []
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5,
                            retry=Retry(NoBackoff(), 0))
    beat = Heartbeat(redis=client, snapshot=lambda: snapshot(0), interval=1, emit=lines.append)
    try:
        assert not await beat.beat()
        assert lines == []
    finally:
        await client.aclose()
