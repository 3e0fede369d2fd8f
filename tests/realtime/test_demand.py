"""Viewer demand in the registry: the deployment-wide key -> viewers hash the streamer carries,
and admission against the room the streamer leaves for it (real Redis)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import orjson
import redis

from core import names
from realtime.registry import ConnectionRegistry


def demand(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(names.DEMAND_KEY).items()}


def test_demand_counts_viewers_across_shards_and_forgets_them(
    redis_client: redis.Redis,
) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=4)
    for cid in ("a", "b", "c"):
        registry.connect(cid, meta={})
    registry.subscribe("a", ["NSE_EQ:1", "NSE_EQ:2"])
    registry.subscribe("b", ["NSE_EQ:2"])
    registry.subscribe("c", ["NSE_EQ:2", "NSE_EQ:3", "NSE_EQ:3"])
    assert demand(redis_client) == {"NSE_EQ:1": 1, "NSE_EQ:2": 3, "NSE_EQ:3": 1}
    registry.unsubscribe("a", ["NSE_EQ:1", "NSE_EQ:9"])
    registry.remove("c")
    assert demand(redis_client) == {"NSE_EQ:2": 2}
    registry.remove("b")
    registry.remove("a")
    assert demand(redis_client) == {}


def test_a_key_new_to_the_feed_wakes_the_streamer_once_per_subscribe(
    redis_client: redis.Redis,
) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    registry.connect("a", meta={})
    registry.connect("b", meta={})
    redis_client.sadd(names.CARRIED_KEY, "NSE_EQ:5")
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(names.CONTROL_CHANNEL)
    try:
        assert pubsub.get_message(timeout=1) is None  # the subscribe confirmation
        registry.subscribe("a", ["NSE_EQ:5"])  # carried already: nothing to wake
        registry.subscribe("a", ["NSE_EQ:6", "NSE_EQ:7"])  # new to the feed: one wake
        registry.subscribe("b", ["NSE_EQ:6"])  # demanded already: nothing to wake
        woken = []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            woken.append(orjson.loads(message["data"]))
        assert woken == [{"type": names.DEMAND_CHANGED}]
    finally:
        pubsub.close()


def test_keys_beyond_the_room_are_refused_and_not_recorded(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    registry.connect("a", meta={})
    registry.connect("b", meta={})
    redis_client.sadd(names.CARRIED_KEY, "IDX_I:13")
    redis_client.sadd(names.REJECTED_KEY, "NSE_EQ:99")
    redis_client.set(names.ROOM_KEY, 2)
    first = registry.subscribe("a", ["IDX_I:13", "NSE_EQ:1", "NSE_EQ:2", "NSE_EQ:3",
                                     "NSE_EQ:99"])
    assert first.ok
    assert first.added == ["IDX_I:13", "NSE_EQ:1", "NSE_EQ:2"]
    assert first.refused == ["NSE_EQ:3", "NSE_EQ:99"]
    assert first.total == 3
    assert registry.keys("a") == {"IDX_I:13", "NSE_EQ:1", "NSE_EQ:2"}
    assert redis_client.get(names.ROOM_KEY) == b"0"
    # A carried key, or one some viewer already brought in, costs no room.
    second = registry.subscribe("b", ["IDX_I:13", "NSE_EQ:2", "NSE_EQ:4"])
    assert second.added == ["IDX_I:13", "NSE_EQ:2"] and second.refused == ["NSE_EQ:4"]
    assert demand(redis_client) == {"IDX_I:13": 2, "NSE_EQ:1": 1, "NSE_EQ:2": 2}


def test_concurrent_subscribes_never_pass_the_room_together(redis_client: redis.Redis) -> None:
    registry = ConnectionRegistry(redis=redis_client, shards=8)
    ids = [f"c{i}" for i in range(20)]
    for cid in ids:
        registry.connect(cid, meta={})
    redis_client.set(names.ROOM_KEY, 25)
    batches = [(cid, [f"NSE_EQ:{i * 10 + j}" for j in range(5)]) for i, cid in enumerate(ids)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: registry.subscribe(*job), batches))
    assert sum(len(r.added) for r in results) == 25
    assert sum(len(r.refused) for r in results) == 75
    assert len(demand(redis_client)) == 25


def test_no_room_known_admits_everything(redis_client: redis.Redis) -> None:
    """No streamer has said what it carries (it is not running): nothing can be judged yet, and
    whatever is asked for now is what a starting streamer must carry."""
    registry = ConnectionRegistry(redis=redis_client, shards=1)
    registry.connect("a", meta={})
    result = registry.subscribe("a", [f"NSE_EQ:{i}" for i in range(30)])
    assert len(result.added) == 30 and result.refused == []


def test_an_epoch_reset_by_a_wipe_never_counts_back_to_a_value_read_before(
    redis_client: redis.Redis,
) -> None:
    """Readers cache "the epoch I read"; after a flush, a counter starting again from 1 would
    reach that value after as many changes and a stale cache would look current."""
    from realtime import keys as layout

    registry = ConnectionRegistry(redis=redis_client, shards=1)
    registry.connect("a", meta={})
    registry.subscribe("a", ["NSE_EQ:1"])
    before = {redis_client.get(layout.shard_epoch(0)), redis_client.get(layout.REFS_EPOCH)}
    redis_client.flushdb()
    seen = set()
    for i in range(5):
        registry.connect(f"b{i}", meta={})
        registry.subscribe(f"b{i}", ["NSE_EQ:1", f"NSE_EQ:{i + 2}"])
        seen |= {redis_client.get(layout.shard_epoch(0)), redis_client.get(layout.REFS_EPOCH)}
    assert not seen & before
    assert len({redis_client.get(layout.shard_epoch(0))} | before) == 3
