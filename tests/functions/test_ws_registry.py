"""The connection registry's Redis scripts, on a real Redis."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import redis

from core import names
from functions.registry import ConnectionRegistry, shard_of
from tests.realtime_support import update


def test_refcounts_follow_subscriptions_across_connections(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    registry.connect("a", meta={})
    registry.connect("b", meta={})
    registry.subscribe("a", ["K:1", "K:2"])
    registry.subscribe("b", ["K:2", "K:3"])
    registry.subscribe("b", ["K:2"])  # already held: no double count
    refs = redis_client.hgetall(names.ws_shard_refs_key(0))
    assert refs == {b"K:1": b"1", b"K:2": b"2", b"K:3": b"1"}
    registry.unsubscribe("a", ["K:2", "K:9"])
    registry.remove("b")
    assert redis_client.hgetall(names.ws_shard_refs_key(0)) == {b"K:1": b"1"}
    assert registry.count() == 1
    assert registry.live_connections(0) == ["a"]


def test_unknown_connections_cannot_subscribe(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client)
    result = registry.subscribe("nobody", ["K:1"])
    assert not result.ok and result.reason == "unknown connection"
    assert not redis_client.exists(names.ws_conn_keys_key("nobody"))


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
    registry.claim("x", [("K:1", 1)])
    limit = names.WS_MAX_CONNECTION_SECONDS + names.WS_EXPIRY_MARGIN_SECONDS + 5
    for key in (names.ws_conn_key("x"), names.ws_conn_keys_key("x"), names.ws_conn_sent_key("x")):
        ttl = redis_client.ttl(key)
        assert names.WS_MAX_CONNECTION_SECONDS < ttl <= limit, key
    expiry = redis_client.zscore(names.WS_CONNECTIONS_KEY, "x")
    assert expiry is not None
    assert abs(expiry - (time.time() + names.WS_MAX_CONNECTION_SECONDS)) < 5
    later = time.time() + names.WS_MAX_CONNECTION_SECONDS + 10
    assert registry.count(now=later) == 0
    assert registry.live_connections(shard, now=later) == []
    assert registry.sweep(shard, now=later) == 1
    assert redis_client.hlen(names.ws_shard_refs_key(shard)) == 0
    assert not redis_client.exists(names.ws_conn_key("x"), names.ws_conn_keys_key("x"))


def test_claims_only_newer_versions_and_retries_of_failed_ones(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    registry.connect("c", meta={})
    registry.subscribe("c", ["K:1", "K:2"])
    big = 1_732_000_000_123_456_789  # nanosecond-style versions must not round
    assert registry.claim("c", [("K:1", 5), ("K:2", big)]) == ["K:1", "K:2"]
    assert registry.claim("c", [("K:1", 5), ("K:2", big - 1)]) == []
    assert registry.claim("c", [("K:1", 6), ("K:2", big + 1)]) == ["K:1", "K:2"]
    # A failed post is deferred; its own version may be claimed again, once.
    kept = registry.defer({"c": [update("K:1", 6, 1.0)]}, shard=0)
    assert kept == 1
    assert redis_client.smembers(names.WS_PENDING_SHARDS_KEY) == {b"0"}
    pending = redis_client.hget(names.ws_conn_pending_key("c"), "K:1")
    assert pending is not None and orjson.loads(pending)["version"] == 6
    assert registry.claim("c", [("K:1", 6)]) == ["K:1"]
    assert registry.claim("c", [("K:1", 6)]) == []
    # Deferring a version that something newer already overtook keeps nothing.
    registry.claim("c", [("K:1", 7)])
    assert registry.defer({"c": [update("K:1", 6, 1.0)]}, shard=0) == 0


def test_window_claims_pick_newest_of_window_and_carried_updates(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    for cid in ("a", "b"):
        registry.connect(cid, meta={})
    registry.subscribe("a", ["K:1", "K:2", "K:3"])
    registry.subscribe("b", ["K:9"])
    window = {k: update(k, 10, 1.0) for k in ("K:1", "K:2", "K:4")}
    claims = registry.claim_window(["a", "b"], window)
    assert {cid: (sorted(fresh), carried) for cid, (fresh, carried) in claims.items()} == {
        "a": (["K:1", "K:2"], [])}
    assert registry.claim_window(["a", "b"], window) == {}  # a replayed window sends nothing
    # K:1 failed to post at v11; K:2 at v11 too, but a v12 window overtakes it.
    registry.claim_window(["a"], {k: update(k, 11, 2.0) for k in ("K:1", "K:2")})
    registry.defer({"a": [update("K:1", 11, 2.0), update("K:2", 11, 2.0)]}, shard=0)
    late = {"K:1": update("K:1", 10, 1.0), "K:2": update("K:2", 12, 3.0),
            "K:3": update("K:3", 5, 4.0)}
    fresh, carried = registry.claim_window(["a"], late)["a"]
    sent = [(k, late[k]["version"]) for k in fresh]
    sent += [(u["key"], u["version"]) for u in map(orjson.loads, carried)]
    assert sorted(sent) == [("K:1", 11), ("K:2", 12), ("K:3", 5)]
    assert not redis_client.exists(names.ws_conn_pending_key("a"))
