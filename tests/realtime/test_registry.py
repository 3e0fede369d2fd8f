"""The connection registry's Redis scripts, on a real Redis."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import redis

from core import names
from realtime import keys as layout
from realtime.registry import (
    ConnectionLimits,
    ConnectionRegistry,
    MessageRate,
    Refusal,
    ShardSubscriptions,
    Verdict,
    shard_of,
)
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
    shard = registry.connect("x", meta={"source_ip": "1.2.3.4"}).shard
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


def test_connect_caps_are_exact_and_a_refusal_records_nothing(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=2)
    limits = ConnectionLimits(total=3, per_source_ip=2)

    def connect(cid: str, ip: str) -> Refusal | None:
        return registry.connect(cid, meta={"source_ip": ip}, limits=limits).refused

    assert [connect("a", "ip1"), connect("b", "ip1"), connect("c", "ip1")] == \
        [None, None, Refusal.SOURCE_IP]
    assert [connect("d", "ip2"), connect("e", "ip3")] == [None, Refusal.FULL]
    assert not redis_client.exists(layout.conn("c"), layout.conn("e"), layout.source_ip("ip3"))
    assert redis_client.zcard(layout.CONNECTIONS) == 3
    assert registry.from_source_ip("ip1") == 2
    # A retried $connect of a registered id is not a new connection.
    assert connect("a", "ip1") is None and registry.from_source_ip("ip1") == 2
    # Removal frees the address's slot (and the registry's) in the same script.
    assert registry.remove("a")
    assert registry.from_source_ip("ip1") == 1
    assert connect("c", "ip1") is None
    ttl = redis_client.ttl(layout.source_ip("ip1"))
    assert layout.MAX_CONNECTION_SECONDS - 5 < ttl <= layout.MAX_CONNECTION_SECONDS + 1
    registry.remove("b")
    registry.remove("c")
    assert not redis_client.exists(layout.source_ip("ip1"))  # empty sets leave no key


def test_an_expired_connection_holds_no_slot(redis_client: redis.Redis) -> None:
    """A connection whose $disconnect never came stops counting at its expiry (2 h)."""
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    limits = ConnectionLimits(total=2, per_source_ip=2)
    registry.connect("live", meta={"source_ip": "ip"})
    lost = time.time() - layout.MAX_CONNECTION_SECONDS - 60
    registry.connect("lost", meta={"source_ip": "ip"}, connected_at=lost)
    assert redis_client.zcard(layout.source_ip("ip")) == 2
    assert registry.connect("next", meta={"source_ip": "ip"}, limits=limits).ok
    assert registry.from_source_ip("ip") == 2
    assert redis_client.zscore(layout.source_ip("ip"), "lost") is None  # pruned as it was read


def test_concurrent_connects_never_pass_the_caps(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=4)
    limits = ConnectionLimits(total=7, per_source_ip=5)
    attempts = [(f"c{i}", f"ip{i % 2}") for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda a: registry.connect(a[0], meta={"source_ip": a[1]}, limits=limits), attempts))
    assert sum(r.ok for r in results) == 7
    assert registry.count() == 7
    assert registry.from_source_ip("ip0") <= 5 and registry.from_source_ip("ip1") <= 5


def test_unknown_instruments_are_refused_only_while_a_master_is_loaded(
    redis_client: redis.Redis,
) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1, max_keys=3)
    registry.connect("c", meta={})
    assert registry.subscribe("c", ["K:1", "K:2"]).added == ["K:1", "K:2"]  # no master
    redis_client.hset(names.INSTRUMENT_SYMBOLS_KEY, mapping={"K:1": "ONE", "K:3": "THREE"})
    result = registry.subscribe("c", ["K:3", "K:4", "K:2", "K:4"])
    assert (result.ok, result.added, result.unknown) == (True, ["K:3"], ["K:4"])
    assert registry.keys("c") == {"K:1", "K:2", "K:3"}  # K:2 was held before: kept
    for held in (layout.shard_refs(0), names.DEMAND_KEY):
        assert b"K:4" not in redis_client.hkeys(held)
    # Unknown keys do not count against the cap: the connection is full, yet told why.
    full = registry.subscribe("c", ["K:9"])
    assert (full.ok, full.added, full.unknown, full.total) == (True, [], ["K:9"], 3)


def test_a_segment_the_master_does_not_list_is_not_unknown(redis_client: redis.Redis) -> None:
    """A load keeps only INSTRUMENT_SEGMENTS: an MCX key is not in the master because its
    segment was not loaded, not because Dhan does not know it."""
    from core.instrument_master import SAMPLE_PATH, load_master

    load_master(SAMPLE_PATH, redis=redis_client)
    assert {m.decode() for m in redis_client.smembers(names.INSTRUMENT_SEGMENTS_KEY)} == {
        "IDX_I", "NSE_EQ"}
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    registry.connect("c", meta={})
    result = registry.subscribe("c", ["NSE_EQ:2885", "NSE_EQ:990001", "MCX_COMM:114"])
    assert (result.added, result.unknown) == (["NSE_EQ:2885", "MCX_COMM:114"], ["NSE_EQ:990001"])


def test_the_message_bucket_limits_then_drops_then_disconnects(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    rate = MessageRate(per_second=1.0, burst=3, strikes=2)
    registry.connect("c", meta={})
    ttl = redis_client.ttl(layout.conn("c"))
    verdicts = [registry.admit_message("c", rate) for _ in range(9)]
    assert [v.verdict for v in verdicts] == [Verdict.ALLOW] * 3 + [Verdict.LIMITED] + \
        [Verdict.DROP] * 5
    assert verdicts[3].retry_after_ms == rate.penalty_ms == 1000
    # The bucket lives in the connection's meta hash, under the hash's own expiry.
    assert redis_client.hget(layout.conn("c"), "rl_strikes") == b"1"
    assert 0 < redis_client.ttl(layout.conn("c")) <= ttl
    # Still sending through the window: in debt when it ends, a second strike disconnects.
    time.sleep(1.05)
    assert registry.admit_message("c", rate).verdict is Verdict.DISCONNECT
    # An unknown connection is not limited here, and nothing is written for it.
    assert registry.admit_message("nobody", rate).verdict is Verdict.UNKNOWN
    assert not redis_client.exists(layout.conn("nobody"))


def test_a_client_that_waits_out_its_penalty_is_served_again(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    rate = MessageRate(per_second=2.0, burst=2, strikes=2)
    registry.connect("c", meta={})
    verdicts = [registry.admit_message("c", rate).verdict for _ in range(3)]
    assert verdicts == [Verdict.ALLOW, Verdict.ALLOW, Verdict.LIMITED]
    time.sleep(rate.penalty_ms / 1000 + 0.05)
    assert registry.admit_message("c", rate).verdict is Verdict.ALLOW
    assert redis_client.hget(layout.conn("c"), "rl_strikes") == b"0"  # strikes cleared
