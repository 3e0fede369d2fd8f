"""The relay bridge: conflation, the adaptive window, shard invocations, reconnects (real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from core import names
from core.errors import ConfigError
from core.messages import batch_update, dumps
from local.invoker import LocalInvoker
from realtime import keys as layout
from realtime.registry import ConnectionRegistry, shard_of
from realtime.window import Conflator, expected_posts, next_window, split_payloads
from relay.bridge import RelayBridge
from relay.invoke import LambdaInvoker
from relay.settings import BridgeSettings
from relay.wiring import build_bridge
from relay.wiring import main as bridge_main
from tests.realtime_support import update, wait_for


class RecordingInvoker:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    async def invoke(self, payload: dict[str, Any]) -> None:
        self.payloads.append(orjson.loads(dumps(payload)))  # what would cross the wire

    def updates(self) -> list[tuple[int, str, int, float]]:
        return [(p["shard"], u["key"], u["version"], u["ltp"]) for p in self.payloads
                for u in p["updates"]]


def one_subscriber(redis_client: redis.Redis, cid: str, keys: list[str]) -> ConnectionRegistry:
    """A one-shard registry with one connection subscribed to `keys`."""
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    registry.connect(cid, meta={})
    registry.subscribe(cid, keys)
    return registry


def ids_in_shards(shards: int) -> dict[int, str]:
    found: dict[int, str] = {}
    n = 0
    while len(found) < shards:
        cid = f"conn{n:07d}="
        found.setdefault(shard_of(cid, shards), cid)
        n += 1
    return found


@contextlib.asynccontextmanager
async def running(bridge: RelayBridge) -> AsyncIterator[RelayBridge]:
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.wait_for(bridge.subscribed.wait(), 5)
        yield bridge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_conflator_keeps_the_newest_version_not_the_first() -> None:
    conflator = Conflator()
    assert conflator.add_message(batch_update([update("A:1", 2, 10.0), update("B:1", 1, 5.0)]))
    conflator.add_message(batch_update([update("A:1", 4, 12.0), update("A:1", 3, 11.0)]))
    conflator.add_message({"type": "screener_ltp_update", "ltp": 1.0})  # no version: ignored
    conflator.add_message(batch_update([{"key": "C:1", "version": True}]))  # bool is no version
    window = conflator.drain()
    assert {k: (u["version"], u["ltp"]) for k, u in window.items()} == {
        "A:1": (4, 12.0), "B:1": (1, 5.0)}
    assert len(conflator) == 0


def test_window_grows_to_the_budget_at_once_and_shrinks_slowly() -> None:
    kwargs = {"budget_per_second": 5000.0, "minimum": 0.25, "maximum": 2.0}
    assert next_window(0.25, 200, **kwargs) == 0.25  # 200 clients: 800 posts/s, fine
    grown = next_window(0.25, 5000, **kwargs)  # 5,000 clients would post 20,000/s
    assert grown == 5000 * 1.1 / 5000
    assert 5000 / grown <= 5000
    assert next_window(grown, 100, **kwargs) == grown * 0.8
    assert next_window(2.0, 1_000_000, **kwargs) == 2.0
    assert next_window(0.3, 0, **kwargs) == 0.25


def test_expected_posts_is_bounded_by_connections_per_shard() -> None:
    refs = {0: {"A": 3, "B": 2}, 1: {"A": 1}}
    assert expected_posts(["A", "B", "Z"], refs, {0: 4, 1: 9}) == 4 + 1


def test_payloads_split_under_the_lambda_limit() -> None:
    updates = [update(f"NSE_FNO:{i}", 1, 100.0) for i in range(5000)]
    parts = split_payloads({"shard": 3}, updates, max_bytes=100_000)
    assert all(len(dumps(p)) <= 100_000 for p in parts)
    assert [u for p in parts for u in p["updates"]] == updates
    assert {p["shard"] for p in parts} == {3}


def test_known_update_sizes_decide_the_split_without_encoding_the_whole_payload() -> None:
    updates = [update(f"NSE_FNO:{i}", 1, 100.0) for i in range(5000)]
    sizes = {u["key"]: len(dumps(dict(u))) for u in updates}
    assert len(split_payloads({"shard": 3}, updates[:100], max_bytes=100_000, sizes=sizes)) == 1
    parts = split_payloads({"shard": 3}, updates, max_bytes=100_000, sizes=sizes)
    assert len(parts) > 1
    assert all(len(dumps(p)) <= 100_000 for p in parts)
    assert [u for p in parts for u in p["updates"]] == updates


async def test_windows_invoke_each_shard_with_its_own_newest_updates(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=2)
    ids = ids_in_shards(2)
    for cid in ids.values():
        registry.connect(cid, meta={})
    registry.subscribe(ids[0], ["NSE_EQ:1", "NSE_EQ:2"])
    registry.subscribe(ids[1], ["NSE_EQ:2", "NSE_EQ:3"])
    invoker = RecordingInvoker()
    bridge = RelayBridge(redis=aredis, invoker=invoker, min_window=0.05, max_window=0.05,
                         housekeeping_seconds=3600)
    async with running(bridge):
        for version in range(1, 4):
            await aredis.publish(names.LIVE_LTP_CHANNEL, dumps(batch_update(
                [update(k, version, 100.0 + version) for k in ("NSE_EQ:1", "NSE_EQ:2",
                                                               "NSE_EQ:3", "NSE_EQ:4")])))
        expected = {(0, "NSE_EQ:1"), (0, "NSE_EQ:2"), (1, "NSE_EQ:2"), (1, "NSE_EQ:3")}

        def newest() -> dict[tuple[int, str], int]:
            return {(s, k): v for s, k, v, _ in invoker.updates()}

        await wait_for(lambda: newest() == dict.fromkeys(expected, 3))
    # Only subscribed (shard, key) pairs were sent, each at most once per window.
    assert {(s, k) for s, k, _, _ in invoker.updates()} == expected
    # Every window's values are in ws:latest (the snapshot's source), unsubscribed keys too.
    latest = {k.decode(): orjson.loads(v)["version"]
              for k, v in redis_client.hgetall(layout.LATEST).items()}
    assert latest.items() >= {"NSE_EQ:1": 3, "NSE_EQ:2": 3, "NSE_EQ:3": 3, "NSE_EQ:4": 3}.items()
    assert 0 < redis_client.ttl(layout.LATEST) <= layout.LATEST_TTL_SECONDS
    pairs = [(p["window"], p["shard"]) for p in invoker.payloads]
    assert len(pairs) == len(set(pairs))


async def test_a_subscription_change_reaches_the_next_window_though_refs_are_cached(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    registry = one_subscriber(redis_client, "c0", ["NSE_EQ:1"])
    invoker = RecordingInvoker()
    bridge = RelayBridge(redis=aredis, invoker=invoker, min_window=10, max_window=10,
                         housekeeping_seconds=3600)
    version = 0

    async def window() -> set[str]:
        nonlocal version
        version += 1
        invoker.payloads.clear()
        for key in ("NSE_EQ:1", "NSE_EQ:2"):
            bridge.conflator.add(update(key, version, 100.0 + version))
        await bridge.close_window()
        return {k for _, k, _, _ in invoker.updates()}

    assert await window() == {"NSE_EQ:1"}
    assert await window() == {"NSE_EQ:1"}  # served from the cache
    registry.subscribe("c0", ["NSE_EQ:2"])
    assert await window() == {"NSE_EQ:1", "NSE_EQ:2"}
    registry.unsubscribe("c0", ["NSE_EQ:1"])
    assert await window() == {"NSE_EQ:2"}
    registry.remove("c0")
    assert await window() == set()


async def test_pending_and_housekeeping_shards_are_invoked_without_updates(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=4)
    ids = ids_in_shards(4)
    for cid in ids.values():
        registry.connect(cid, meta={})
    invoker = RecordingInvoker()
    bridge = RelayBridge(redis=aredis, invoker=invoker, housekeeping_seconds=3600)
    await bridge.close_window()  # the first window is a housekeeping one: every shard
    assert sorted(p["shard"] for p in invoker.payloads) == [0, 1, 2, 3]
    invoker.payloads.clear()
    await bridge.close_window()
    assert invoker.payloads == []
    redis_client.sadd(layout.PENDING_SHARDS, 2)
    await bridge.close_window()
    assert [(p["shard"], p["updates"]) for p in invoker.payloads] == [(2, [])]
    assert not redis_client.exists(layout.PENDING_SHARDS)


async def test_window_adapts_to_the_post_budget(aredis: aioredis.Redis,
                                               redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    for n in range(300):
        registry.connect(f"c{n}", meta={})
        registry.subscribe(f"c{n}", ["NSE_EQ:1"])
    bridge = RelayBridge(redis=aredis, invoker=RecordingInvoker(), budget_per_second=500,
                         min_window=0.25, max_window=5.0)
    bridge.conflator.add(update("NSE_EQ:1", 1, 1.0))
    await bridge.close_window()
    assert bridge.window == 300 * 1.1 / 500
    assert bridge.stats.expected_posts_per_second == 300 / 0.25
    bridge.conflator.add(update("NSE_EQ:1", 2, 1.0))
    await bridge.close_window()
    assert 300 / bridge.window <= 500


async def test_after_a_reconnect_moved_prices_are_resent(
    redis_url: str, redis_client: redis.Redis
) -> None:
    name = f"bridge-test-{uuid.uuid4().hex[:8]}"
    async with aioredis.Redis.from_url(redis_url, client_name=name) as aredis:
        await _reconnect_scenario(aredis, redis_client, name)


async def _reconnect_scenario(aredis: aioredis.Redis, redis_client: redis.Redis,
                              name: str) -> None:
    one_subscriber(redis_client, "c", ["NSE_EQ:1", "NSE_EQ:2", "NSE_EQ:3"])
    invoker = RecordingInvoker()
    bridge = RelayBridge(redis=aredis, invoker=invoker, min_window=0.05, max_window=0.05,
                         housekeeping_seconds=3600, backoff_base=0.01)
    async with running(bridge):
        await aredis.publish(names.LIVE_LTP_CHANNEL, dumps(batch_update(
            [update("NSE_EQ:1", 7, 100.0), update("NSE_EQ:2", 3, 50.0)])))
        await wait_for(lambda: ("NSE_EQ:1", 7) in {(k, v) for _, k, v, _ in invoker.updates()})
        # While the bridge's pubsub connection is down, the streamer moves NSE_EQ:1 and
        # NSE_EQ:3; NSE_EQ:2 is unchanged. Its messages are lost; the cache holds the truth.
        redis_client.set(names.ltp_key("NSE_EQ:1"), "101.5", ex=30)
        redis_client.set(names.ltp_key("NSE_EQ:2"), "50.0", ex=30)
        redis_client.set(names.ltp_key("NSE_EQ:3"), "9.25", ex=30)
        invoker.payloads.clear()
        ours = [c["id"] for c in redis_client.client_list(_type="pubsub")
                if c.get("name") == name]
        assert ours
        for client_id in ours:
            redis_client.client_kill_filter(_id=client_id)
        await wait_for(lambda: bridge.stats.resynced >= 2)
        await wait_for(lambda: len(invoker.updates()) >= 2)
    resent = {k: (v, ltp) for _, k, v, ltp in invoker.updates()}
    assert resent == {"NSE_EQ:1": (8, 101.5), "NSE_EQ:3": (0, 9.25)}
    assert bridge.stats.reconnects + bridge.stats.reader_errors >= 1


class FlakyRedis:
    """A real client whose first `failures` pubsub connections fail."""

    def __init__(self, real: aioredis.Redis, failures: int) -> None:
        self._real = real
        self.failures = failures

    def pubsub(self) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("Redis is restarting")
        return self._real.pubsub()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_the_reader_reports_errors_and_keeps_retrying(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    one_subscriber(redis_client, "c", ["NSE_EQ:1"])
    invoker = RecordingInvoker()
    bridge = RelayBridge(redis=FlakyRedis(aredis, 3), invoker=invoker, min_window=0.05,
                         max_window=0.05, backoff_base=0.01, backoff_cap=0.02)
    async with running(bridge):
        assert bridge.stats.reader_errors == 3
        assert "Redis is restarting" in bridge.stats.last_error
        await aredis.publish(names.LIVE_LTP_CHANNEL, dumps(batch_update(
            [update("NSE_EQ:1", 1, 1.0)])))
        await wait_for(lambda: invoker.updates() != [])


async def test_local_invoker_folds_windows_while_a_shard_is_busy() -> None:
    import threading

    release = threading.Event()
    seen: list[dict[str, Any]] = []

    def run(payload: dict[str, Any]) -> int:
        seen.append(payload)
        release.wait(5)
        return len(payload["updates"])

    invoker = LocalInvoker(run=run)
    await invoker.invoke({"shard": 0, "window": 1, "updates": [update("A:1", 1, 1.0)]})
    await wait_for(lambda: len(seen) == 1)
    await invoker.invoke({"shard": 0, "window": 2, "updates": [update("A:1", 2, 2.0),
                                                               update("B:1", 1, 5.0)]})
    await invoker.invoke({"shard": 0, "window": 3, "updates": [update("A:1", 3, 3.0)]})
    await invoker.invoke({"shard": 1, "window": 3, "updates": [update("C:1", 1, 9.0)]})
    release.set()
    await invoker.drain()
    by_shard = [(p["shard"], p["window"], sorted((u["key"], u["version"]) for u in p["updates"]))
                for p in seen]
    assert by_shard[0] == (0, 1, [("A:1", 1)])
    assert sorted(by_shard[1:]) == [(0, 3, [("A:1", 3), ("B:1", 1)]), (1, 3, [("C:1", 1)])]
    assert invoker.folded == 1 and invoker.errors == 0


async def test_a_failed_invoke_sends_its_updates_in_the_next_window(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    one_subscriber(redis_client, "c0", ["NSE_EQ:1", "NSE_EQ:2"])

    class FailingOnce(RecordingInvoker):
        failed = False

        async def invoke(self, payload: dict[str, Any]) -> None:
            if payload["updates"] and not self.failed:
                self.failed = True
                raise TimeoutError("read timeout")
            await super().invoke(payload)

    invoker = FailingOnce()
    bridge = RelayBridge(redis=aredis, invoker=invoker, min_window=10, max_window=10,
                         housekeeping_seconds=3600)
    bridge.conflator.extend([update("NSE_EQ:1", 5, 101.0), update("NSE_EQ:2", 5, 201.0)])
    await bridge.close_window()
    assert invoker.failed and invoker.updates() == []
    assert bridge.stats.invoke_errors == 1 and "read timeout" in bridge.stats.last_error
    # A newer tick of one key arrives meanwhile: it wins; the other key's value is resent.
    bridge.conflator.add(update("NSE_EQ:1", 6, 102.0))
    await bridge.close_window()
    assert sorted((k, v) for _, k, v, _ in invoker.updates()) == [("NSE_EQ:1", 6),
                                                                   ("NSE_EQ:2", 5)]


def test_the_default_lambda_client_has_short_timeouts_and_bounded_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    settings = BridgeSettings.from_env({"FANOUT_FUNCTION_NAME": "fn"})
    bridge = build_bridge(settings)
    config = bridge._invoker._client.meta.config  # type: ignore[attr-defined]
    assert (config.connect_timeout, config.read_timeout) == (2.0, 5.0)
    assert config.retries["total_max_attempts"] == 2


async def test_lambda_invoker_invokes_asynchronously_with_json_payloads() -> None:
    calls: list[dict[str, Any]] = []

    class FakeLambda:
        def invoke(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            return {"StatusCode": 202}

    invoker = LambdaInvoker(lambda_client=FakeLambda(), function_name="ltp-fanout")
    payload = {"shard": 3, "window": 9, "published_at": 1.5, "updates": [update("A:1", 1, 2.0)]}
    await invoker.invoke(payload)
    (call,) = calls
    assert call["FunctionName"] == "ltp-fanout"
    assert call["InvocationType"] == "Event"
    assert orjson.loads(call["Payload"]) == payload


def test_bridge_settings_from_the_environment() -> None:
    settings = BridgeSettings.from_env({"FANOUT_FUNCTION_NAME": "fn", "WS_WINDOW_MIN_MS": "100",
                                        "WS_POST_BUDGET_PER_SECOND": "2500"})
    assert (settings.fanout_function_name, settings.min_window, settings.max_window,
            settings.budget_per_second) == ("fn", 0.1, 2.0, 2500.0)
    with pytest.raises(ConfigError, match="WS_WINDOW_MAX_MS"):
        BridgeSettings.from_env({"WS_WINDOW_MIN_MS": "500", "WS_WINDOW_MAX_MS": "100"})
    with pytest.raises(ConfigError, match="FANOUT_FUNCTION_NAME"):
        build_bridge(BridgeSettings.from_env({}))


def test_bridge_main_exits_2_naming_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert bridge_main({}) == 2
    assert "FANOUT_FUNCTION_NAME" in capsys.readouterr().err
    assert bridge_main({"FANOUT_FUNCTION_NAME": "fn", "REDIS_AUTH_TOKEN": "  "}) == 2
    assert "REDIS_AUTH_TOKEN is set but blank" in capsys.readouterr().err


def test_the_bridge_client_carries_the_auth_token() -> None:
    settings = BridgeSettings.from_env({"FANOUT_FUNCTION_NAME": "fn",
                                        "REDIS_URL": "rediss://cache.example:6379/0",
                                        "REDIS_AUTH_TOKEN": "s3cret-token"})
    bridge = build_bridge(settings, invoker=LambdaInvoker(lambda_client=None, function_name="fn"))
    kwargs = bridge._redis.connection_pool.connection_kwargs
    assert kwargs["password"] == "s3cret-token" and kwargs["host"] == "cache.example"
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_check_hostname"] is True


# --- heartbeat: status in Redis, EMF line, liveness file ---------------------------------------


class Lines:
    """Collects the EMF lines a bridge emits."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __call__(self, line: bytes) -> None:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        self.records.append(orjson.loads(line))


class FailingInvoker(RecordingInvoker):
    """Fails every invoke that carries updates while `failing` is set."""

    failing = True

    async def invoke(self, payload: dict[str, Any]) -> None:
        if self.failing and payload["updates"]:
            raise TimeoutError("read timeout")
        await super().invoke(payload)


class BrokenRedis:
    """A real client whose writes (SET) or pipelines fail while the flag is set."""

    def __init__(self, real: aioredis.Redis) -> None:
        self._real = real
        self.fail_set = False
        self.fail_pipeline = False

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_set:
            raise redis.exceptions.ConnectionError("Redis is restarting")
        return await self._real.set(*args, **kwargs)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_pipeline:
            raise redis.exceptions.ConnectionError("Redis is restarting")
        return self._real.pipeline(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def stale(path: Any) -> None:
    """Age a liveness file to the epoch, so that a later touch is visible in its mtime."""
    path.touch()
    os.utime(path, (0, 0))


def stored_heartbeat(redis_client: redis.Redis) -> dict[str, Any]:
    raw = redis_client.get(layout.BRIDGE_HEARTBEAT)
    assert raw is not None, "no heartbeat in Redis"
    document: dict[str, Any] = orjson.loads(raw)
    return document


async def test_a_heartbeat_carries_windows_invokes_failures_and_its_time(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    one_subscriber(redis_client, "c0", ["NSE_EQ:1", "NSE_EQ:2"])
    invoker, lines = FailingInvoker(), Lines()
    bridge = RelayBridge(redis=aredis, invoker=invoker, min_window=0.5, max_window=0.5,
                         housekeeping_seconds=3600, emit=lines)
    bridge.conflator.extend([update("NSE_EQ:1", 1, 10.0), update("NSE_EQ:2", 1, 20.0)])
    await bridge.close_window()  # the invoke fails: both updates go back
    invoker.failing = False
    await bridge.close_window()  # ... and out with this one
    before = time.time()
    assert await bridge.beat()
    after = time.time()
    document = stored_heartbeat(redis_client)
    assert before <= document["time"] <= after
    assert (document["windows"], document["invocations"], document["invoke_errors"],
            document["requeued"]) == (2, 2, 1, 2)
    assert document["window_seconds"] == 0.5 and document["heartbeat_errors"] == 0
    assert 0 < redis_client.ttl(layout.BRIDGE_HEARTBEAT) <= layout.BRIDGE_HEARTBEAT_TTL_SECONDS
    assert sorted((k, v) for _, k, v, _ in invoker.updates()) == [("NSE_EQ:1", 1),
                                                                   ("NSE_EQ:2", 1)]
    (record,) = lines.records
    (directive,) = record["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "LtpStream"
    assert directive["Dimensions"] == [["service"]] and record["service"] == "relay"
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units == {"BridgeHeartbeats": "Count", "BridgeWindows": "Count",
                     "BridgeInvocations": "Count", "BridgeInvokeFailures": "Count",
                     "BridgeWindowSeconds": "Seconds"}
    assert {name: record[name] for name in units} == {
        "BridgeHeartbeats": 1, "BridgeWindows": 2, "BridgeInvocations": 2,
        "BridgeInvokeFailures": 1, "BridgeWindowSeconds": 0.5}
    assert int(before * 1000) <= record["_aws"]["Timestamp"] <= int(after * 1000) + 1
    # The counters are deltas: the next line counts only what happened since this one.
    bridge.conflator.add(update("NSE_EQ:1", 2, 11.0))
    await bridge.close_window()
    assert await bridge.beat()
    assert {n: lines.records[-1][n] for n in ("BridgeWindows", "BridgeInvocations",
                                              "BridgeInvokeFailures")} == {
        "BridgeWindows": 1, "BridgeInvocations": 1, "BridgeInvokeFailures": 0}
    assert stored_heartbeat(redis_client)["windows"] == 3


async def test_a_quiet_market_keeps_the_bridge_beating(
    aredis: aioredis.Redis, redis_client: redis.Redis, tmp_path: Any
) -> None:
    liveness = tmp_path / "relay.alive"
    stale(liveness)
    lines = Lines()
    # No tick arrives and no window closes within the test: only the heartbeat task beats.
    bridge = RelayBridge(redis=aredis, invoker=RecordingInvoker(), min_window=3600,
                         max_window=3600, heartbeat_seconds=0.02, emit=lines,
                         liveness_file=str(liveness))
    async with running(bridge):
        await wait_for(lambda: len(lines.records) >= 3)
        await wait_for(lambda: stored_heartbeat(redis_client)["subscribed"] is True)
    assert stored_heartbeat(redis_client)["windows"] == 0
    assert all(r["BridgeHeartbeats"] == 1 and r["BridgeWindows"] == 0 for r in lines.records)
    assert liveness.stat().st_mtime > 0


async def test_a_beat_that_misses_redis_is_not_counted_but_the_bridge_stays_alive(
    aredis: aioredis.Redis, redis_client: redis.Redis, tmp_path: Any
) -> None:
    liveness = tmp_path / "relay.alive"
    broken, lines = BrokenRedis(aredis), Lines()
    bridge = RelayBridge(redis=broken, invoker=RecordingInvoker(), housekeeping_seconds=3600,
                         emit=lines, liveness_file=str(liveness))
    await bridge.close_window()
    broken.fail_set = True
    stale(liveness)
    assert await bridge.beat() is False
    assert lines.records == [] and not redis_client.exists(layout.BRIDGE_HEARTBEAT)
    assert bridge.stats.heartbeat_errors == 1
    # Redis being down is not a reason to replace the task: the liveness file moved.
    assert liveness.stat().st_mtime > 0
    broken.fail_set = False
    await bridge.close_window()
    assert await bridge.beat() is True
    # The window of the missed beat is counted in the next line, not lost.
    (record,) = lines.records
    assert record["BridgeWindows"] == 2
    assert stored_heartbeat(redis_client)["heartbeat_errors"] == 1


async def test_an_unwritable_liveness_file_does_not_break_the_bridge(
    aredis: aioredis.Redis, redis_client: redis.Redis, tmp_path: Any
) -> None:
    lines = Lines()
    bridge = RelayBridge(redis=aredis, invoker=RecordingInvoker(), emit=lines,
                         liveness_file=str(tmp_path / "no-such-dir" / "relay.alive"))
    assert await bridge.beat() is True
    assert len(lines.records) == 1
    assert redis_client.exists(layout.BRIDGE_HEARTBEAT)


async def test_a_window_stuck_past_the_stall_limit_stops_the_liveness_file(
    aredis: aioredis.Redis, redis_client: redis.Redis, tmp_path: Any
) -> None:
    one_subscriber(redis_client, "c0", ["NSE_EQ:1"])
    liveness = tmp_path / "relay.alive"
    now = [1000.0]
    entered, release = asyncio.Event(), asyncio.Event()

    class StuckInvoker(RecordingInvoker):
        async def invoke(self, payload: dict[str, Any]) -> None:
            entered.set()
            await release.wait()
            await super().invoke(payload)

    invoker = StuckInvoker()
    bridge = RelayBridge(redis=aredis, invoker=invoker, min_window=0.01, max_window=0.01,
                         housekeeping_seconds=3600, heartbeat_seconds=3600,
                         stall_seconds=60, clock=lambda: now[0], liveness_file=str(liveness))
    bridge.conflator.add(update("NSE_EQ:1", 1, 1.0))
    async with running(bridge):
        await asyncio.wait_for(entered.wait(), 5)  # the windower is inside its first window
        now[0] += 30  # slow, not stuck
        stale(liveness)
        await bridge.beat()
        assert liveness.stat().st_mtime > 0
        now[0] += 31  # stuck
        stale(liveness)
        await bridge.beat()
        assert liveness.stat().st_mtime == 0
        assert stored_heartbeat(redis_client)["windows"] == 0  # the status itself is written
        release.set()
        await wait_for(lambda: invoker.updates() != [])
        await wait_for(lambda: not bridge.stalled())
        await bridge.beat()
        assert liveness.stat().st_mtime > 0


async def test_a_window_whose_redis_calls_fail_is_sent_with_the_next_one(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    one_subscriber(redis_client, "c0", ["NSE_EQ:1", "NSE_EQ:2"])
    broken, invoker = BrokenRedis(aredis), RecordingInvoker()
    bridge = RelayBridge(redis=broken, invoker=invoker, housekeeping_seconds=3600)
    bridge.conflator.extend([update("NSE_EQ:1", 1, 10.0), update("NSE_EQ:2", 1, 20.0)])
    broken.fail_pipeline = True
    with pytest.raises(redis.exceptions.ConnectionError):
        await bridge.close_window()
    assert invoker.payloads == [] and bridge.stats.requeued == 2
    broken.fail_pipeline = False
    bridge.conflator.add(update("NSE_EQ:1", 2, 11.0))  # a newer tick wins over the requeued one
    await bridge.close_window()
    assert sorted((k, v) for _, k, v, _ in invoker.updates()) == [("NSE_EQ:1", 2),
                                                                   ("NSE_EQ:2", 1)]


@pytest.mark.parametrize(("flag", "printed"), [("true", True), ("false", False)])
async def test_the_emf_setting_decides_whether_beats_print_metrics(
    redis_url: str, redis_client: redis.Redis, tmp_path: Any, capsys: pytest.CaptureFixture[str],
    flag: str, printed: bool,
) -> None:
    liveness = tmp_path / "alive"
    settings = BridgeSettings.from_env({"FANOUT_FUNCTION_NAME": "fn", "REDIS_URL": redis_url,
                                        "RELAY_EMF_METRICS": flag,
                                        "LIVENESS_FILE": str(liveness)})
    assert settings.liveness_file == str(liveness)
    bridge = build_bridge(settings, invoker=RecordingInvoker())
    try:
        assert await bridge.beat()
    finally:
        await bridge.close()
    out = capsys.readouterr().out
    emf = [orjson.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    assert len(emf) == (1 if printed else 0)
    if printed:
        assert emf[0]["BridgeHeartbeats"] == 1 and emf[0]["service"] == "relay"
    assert liveness.exists()
    assert redis_client.exists(layout.BRIDGE_HEARTBEAT)


def test_the_liveness_file_defaults_to_tmp() -> None:
    settings = BridgeSettings.from_env({"FANOUT_FUNCTION_NAME": "fn"})
    assert settings.liveness_file == "/tmp/relay.alive" and settings.emit_metrics is True
