"""The connection registry's Redis scripts, on a real Redis."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import redis

from realtime import keys as layout
from realtime.registry import ConnectionRegistry, ShardSubscriptions, shard_of
from tests.realtime_support import update


def test_refcounts_follow_subscriptions_across_connections(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    registry.connect("a", meta={})
    registry.connect("b", meta={})
    registry.subscribe("a", ["K:1", "K:2"])
    registry.subscribe("b", ["K:2", "K:3"])
    registry.subscribe("b", ["K:2"])  # already held: no double count
    refs = redis_client.hgetall(layout.shard_refs(0))
    assert refs == {b"K:1": b"1", b"K:2": b"2", b"K:3": b"1"}
    registry.unsubscribe("a", ["K:2", "K:9"])
    registry.remove("b")
    assert redis_client.hgetall(layout.shard_refs(0)) == {b"K:1": b"1"}
    assert registry.count() == 1
    assert list(registry.subscriptions(0).floors) == ["a"]


def test_unknown_connections_cannot_subscribe(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client)
    result = registry.subscribe("nobody", ["K:1"])
    assert not result.ok and result.reason == "unknown connection"
    assert not redis_client.exists(layout.conn_keys("nobody"))


def test_the_limit_holds_under_concurrent_subscribes(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, max_keys=50)
    registry.connect("c", meta={})
    batches = [[f"K:{b * 10 + i}" for i in range(10)] for b in range(12)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda keys: registry.subscribe("c", keys), batches))
    assert sum(r.ok for r in results) == 5
    assert len(registry.keys("c")) == 50


def test_everything_expires_after_the_api_gateway_maximum(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=4)
    shard = registry.connect("x", meta={"source_ip": "1.2.3.4"})
    assert shard == shard_of("x", 4)
    registry.subscribe("x", ["K:1"])
    registry.claim(shard, {"K:1": 1})
    limit = layout.MAX_CONNECTION_SECONDS + layout.EXPIRY_MARGIN_SECONDS + 5
    for key in (layout.conn("x"), layout.conn_keys("x"),
                layout.shard_sent(shard)):
        ttl = redis_client.ttl(key)
        assert layout.MAX_CONNECTION_SECONDS < ttl <= limit, key
    expiry = redis_client.zscore(layout.CONNECTIONS, "x")
    assert expiry is not None
    assert abs(expiry - (time.time() + layout.MAX_CONNECTION_SECONDS)) < 5
    later = time.time() + layout.MAX_CONNECTION_SECONDS + 10
    assert registry.count(now=later) == 0
    assert registry.subscriptions(shard, now=later).floors == {}
    assert registry.sweep(shard, now=later) == 1
    assert redis_client.hlen(layout.shard_refs(shard)) == 0
    assert not redis_client.exists(layout.conn("x"), layout.conn_keys("x"))


def test_a_shard_claims_only_newer_versions(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=2)
    big = 1_732_000_000_123_456_789  # nanosecond-style versions must not round
    assert registry.claim(0, {"K:1": 5, "K:2": big}).fresh == ["K:1", "K:2"]
    assert registry.claim(0, {"K:1": 5, "K:2": big - 1}).fresh == []  # replayed / late
    assert registry.claim(0, {"K:1": 6, "K:2": big + 1, "K:3": 1}).fresh == ["K:1", "K:2", "K:3"]
    # Shards claim independently: each runs its own fan-out.
    assert registry.claim(1, {"K:1": 5}).fresh == ["K:1"]
    # Windows larger than one HMGET chunk inside the script.
    many = {f"M:{i}": 2 for i in range(2_500)}
    assert len(registry.claim(1, many).fresh) == 2_500
    assert registry.claim(1, many).fresh == []


def test_the_epoch_moves_with_every_change_of_who_wants_what(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    epochs = [registry.claim(0, {}).epoch]

    def moved() -> bool:
        epochs.append(registry.claim(0, {}).epoch)
        return epochs[-1] != epochs[-2]

    registry.connect("a", meta={})
    assert moved()
    registry.subscribe("a", ["K:1", "K:2"])
    assert moved()
    registry.subscribe("a", ["K:1"])
    assert not moved()  # nothing new
    registry.mark_snapshot("a", {"K:1": 7})
    assert moved()
    registry.mark_snapshot("a", {"K:1": 6, "K:9": 8})  # lower, and not subscribed
    assert not moved()
    registry.unsubscribe("a", ["K:2"])
    assert moved()
    assert registry.subscriptions(0) == ShardSubscriptions(epochs[-1], {"a": {"K:1": 7}})
    registry.remove("a")
    assert moved()
    assert registry.subscriptions(0).floors == {}


def test_carried_updates_come_back_once_while_still_the_newest(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    for cid in ("a", "b"):
        registry.connect(cid, meta={})
    registry.subscribe("a", ["K:1", "K:2", "K:3"])
    registry.subscribe("b", ["K:1"])
    registry.claim(0, {"K:1": 11, "K:2": 11, "K:3": 11})
    failed = [update("K:1", 11, 2.0), update("K:2", 11, 2.0), update("K:3", 11, 2.0)]
    # K:3 is no longer wanted by the time the failure is recorded: not kept.
    registry.unsubscribe("a", ["K:3"])
    assert registry.defer({"a": failed, "b": [update("K:1", 11, 2.0)]}, shard=0) == 3
    assert redis_client.smembers(layout.PENDING_SHARDS) == {b"0"}
    # A later window overtakes K:2; K:1 is still the newest claimed version and comes back.
    claim = registry.claim(0, {"K:1": 10, "K:2": 12})
    assert claim.fresh == ["K:2"]
    carried = {cid: sorted((u["key"], u["version"]) for u in map(orjson.loads, raws))
               for cid, raws in claim.carried.items()}
    assert carried == {"a": [("K:1", 11)], "b": [("K:1", 11)]}
    assert not redis_client.exists(layout.shard_carry(0))
    assert registry.claim(0, {}).carried == {}
    # Deferring a version that something newer already overtook keeps nothing.
    assert registry.defer({"a": [update("K:2", 11, 2.0)]}, shard=0) == 0


def test_a_key_with_whitespace_cannot_claim_another_key(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    big = 9_000_000_000_000_000
    claim = registry.claim(0, {"K:1\tK:2": big, "K:3 K:4": big, "K:5": 1})
    assert claim.fresh == ["K:5"]
    assert redis_client.hkeys(layout.shard_sent(0)) == [b"K:5"]
    assert registry.claim(0, {"K:2": 1, "K:4": 1}).fresh == ["K:2", "K:4"]
