from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core import liveness
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


async def test_run_refreshes(aredis: aioredis.Redis, redis_client: redis.Redis,
                             tmp_path: Path) -> None:  # fmt: skip
    count = itertools.count()
    beat = Heartbeat(redis=aredis, snapshot=lambda: snapshot(next(count)), interval=0.01,
                     liveness_file=tmp_path / "alive")  # fmt: skip
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


def test_the_document_says_whether_the_market_is_open() -> None:
    beat = Heartbeat(redis=aioredis.Redis(), snapshot=lambda: snapshot(0), interval=10)
    assert beat.document(snapshot(0))["market_open"] is False
    assert beat.document(replace(snapshot(0), market_open=True))["market_open"] is True


async def emitted(snapshots: list[Snapshot], aredis: aioredis.Redis) -> list[dict[str, Any]]:
    """The EMF records of one beat per snapshot, 10 s apart on the heartbeat's clock."""
    lines: list[bytes] = []
    feed = iter(snapshots)
    beat = Heartbeat(redis=aredis, snapshot=lambda: next(feed), interval=10, emit=lines.append,
                     clock=itertools.count(0.0, 10.0).__next__)  # fmt: skip
    for _ in snapshots:
        assert await beat.beat()
    return [loads(line) for line in lines]


async def test_market_tick_age_is_emitted_only_while_the_market_is_open(
    aredis: aioredis.Redis,
) -> None:
    open_ = replace(snapshot(10), market_open=True, last_tick_age=2.5)
    closed = replace(snapshot(20), market_open=False, last_tick_age=2.5)
    records = await emitted([open_, closed], aredis)
    assert records[0]["MarketTickAgeSeconds"] == 2.5
    names = {m["Name"] for m in records[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "MarketTickAgeSeconds" in names
    assert "MarketTickAgeSeconds" not in records[1]
    names = {m["Name"] for m in records[1]["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert names == {"Heartbeats", "Ticks", "LastTickAgeSeconds"}


async def test_no_market_tick_age_without_keys_or_while_stopping(aredis: aioredis.Redis) -> None:
    idle = replace(snapshot(0), market_open=True, state="idle", instruments=0)
    stopping = replace(snapshot(0), market_open=True, state="stopping")
    records = await emitted([idle, stopping], aredis)
    assert all("MarketTickAgeSeconds" not in r for r in records)


async def test_before_the_first_tick_the_market_tick_age_grows_with_the_beats(
    aredis: aioredis.Redis,
) -> None:
    silent = replace(snapshot(0), market_open=True, last_tick_age=None)
    records = await emitted([silent, silent, silent], aredis)
    assert [r["MarketTickAgeSeconds"] for r in records] == [0.0, 10.0, 20.0]
    assert all("LastTickAgeSeconds" not in r for r in records)


async def test_run_touches_the_liveness_file_after_every_beat_even_without_redis(
    tmp_path: Path,
) -> None:
    alive = tmp_path / "streamer.alive"
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5,
                            retry=Retry(NoBackoff(), 0))  # fmt: skip
    beat = Heartbeat(redis=client, snapshot=lambda: snapshot(0), interval=0.01,
                     liveness_file=alive)  # fmt: skip
    task = asyncio.create_task(beat.run())
    try:
        async with asyncio.timeout(5):
            while not alive.exists():
                await asyncio.sleep(0.01)
            os.utime(alive, (1_000_000.0, 1_000_000.0))
            while alive.stat().st_mtime == 1_000_000.0:  # touched again by a later beat
                await asyncio.sleep(0.01)
    finally:
        await cancel_and_wait(task)
        await client.aclose()
    assert beat.failures >= 2
    assert liveness.check(alive, 90) is None


async def test_a_liveness_file_that_cannot_be_written_does_not_fail_the_heartbeat(
    aredis: aioredis.Redis, redis_client: redis.Redis, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    count = itertools.count()
    unwritable = tmp_path / "missing-dir" / "streamer.alive"
    beat = Heartbeat(redis=aredis, snapshot=lambda: snapshot(next(count)), interval=0.01,
                     liveness_file=unwritable)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="streamer.heartbeat"):
        task = asyncio.create_task(beat.run())
        try:
            async with asyncio.timeout(5):
                while (raw := redis_client.get(HEARTBEAT_KEY)) is None or loads(raw)["ticks"] < 3:
                    await asyncio.sleep(0.01)
        finally:
            await cancel_and_wait(task)
    assert not unwritable.exists()
    warnings = [r for r in caplog.records if "liveness file" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per beat


def test_the_liveness_file_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.delenv("LIVENESS_FILE", raising=False)
    default = Heartbeat(redis=aioredis.Redis(), snapshot=lambda: snapshot(0))
    assert default.liveness_file == Path("/tmp/streamer.alive")
    monkeypatch.setenv("LIVENESS_FILE", str(tmp_path / "elsewhere"))
    assert Heartbeat(redis=aioredis.Redis(), snapshot=lambda: snapshot(0)).liveness_file == (
        tmp_path / "elsewhere")
