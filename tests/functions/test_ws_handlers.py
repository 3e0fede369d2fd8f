"""WebSocket handlers through the local API Gateway: real clients, real Redis, real boto3."""

from __future__ import annotations

import orjson
import pytest
import redis
from websockets.exceptions import InvalidStatus

from core import names
from functions.wsauth import mint_token
from realtime import keys as layout
from tests.realtime_support import (
    connect,
    drain,
    recv_json,
    request,
    send_json,
    update,
    wait_for,
    ws_stack,
)

SECRET = "test-signing-secret"


async def test_subscribe_answers_with_snapshot_of_cached_and_bridge_prices(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.set(names.ltp_key("NSE_EQ:1333"), "1612.35", ex=30)
    redis_client.set(names.ltp_key("NSE_EQ:2885"), "2950.1", ex=30)
    latest = update("NSE_EQ:2885", 42, 2950.2) | {"symbol": "RELIANCE"}
    redis_client.hset(layout.LATEST, "NSE_EQ:2885", orjson.dumps(latest))
    async with ws_stack(redis_url) as stack, connect(stack.gateway.ws_url) as ws:
        reply = await request(ws, {"action": "subscribe", "id": "r1",
                                   "keys": ["NSE_EQ:1333", "NSE_EQ:2885", "NSE_EQ:9"]})
        assert reply["type"] == "snapshot"
        assert reply["id"] == "r1"
        assert reply["prices"]["NSE_EQ:1333"] == {"ltp": 1612.35}
        assert reply["prices"]["NSE_EQ:2885"] == {"ltp": 2950.2, "ltt": 1_700_000_000,
                                                  "version": 42, "symbol": "RELIANCE"}
        assert reply["missing"] == ["NSE_EQ:9"]
        (cid,) = stack.gateway.connections
        assert stack.registry.keys(cid) == {"NSE_EQ:1333", "NSE_EQ:2885", "NSE_EQ:9"}
        # The snapshot's version is the key's floor: the stream never goes back behind it.
        assert stack.registry.subscriptions(stack.registry.shard(cid)).floors[cid] == {
            "NSE_EQ:1333": 0, "NSE_EQ:2885": 42, "NSE_EQ:9": 0}


async def test_a_connection_lost_from_a_wiped_cache_is_told_to_reconnect(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The cache is replaced by an empty one while the socket stays open: `ping` and
    `subscribe` answer an `error` with code `reconnect` (never `pong`, never a snapshot), and a
    new connection subscribes and gets its snapshot again."""
    redis_client.set(names.ltp_key("NSE_EQ:1333"), "1612.35", ex=30)
    async with ws_stack(redis_url) as stack:
        async with connect(stack.gateway.ws_url) as ws:
            assert (await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:1333"]})
                    )["type"] == "snapshot"
            redis_client.flushdb()
            pong = await request(ws, {"action": "ping", "id": "p"})
            assert pong["type"] == "error" and pong["code"] == "reconnect", pong
            assert pong["id"] == "p" and "reconnect" in pong["reason"]
            again = await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:1333"]})
            assert again["type"] == "error" and again["code"] == "reconnect", again
            # Refused means refused: nothing was recorded for the unknown connection.
            (cid,) = stack.gateway.connections
            assert not redis_client.exists(layout.conn_keys(cid), layout.conn(cid))
        redis_client.set(names.ltp_key("NSE_EQ:1333"), "1613.0", ex=30)
        async with connect(stack.gateway.ws_url) as ws:
            assert (await request(ws, {"action": "ping"}))["type"] == "pong"
            snap = await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:1333"]})
            assert snap["prices"] == {"NSE_EQ:1333": {"ltp": 1613.0}}


async def test_keys_the_feed_cannot_carry_get_an_error_naming_them(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The streamer left room for one more viewer key and rejected another: the subscribe
    answers a snapshot of what it recorded, then an `error` naming the rest (never a silent
    snapshot-then-nothing), and the refused keys are not recorded."""
    redis_client.set(names.ltp_key("NSE_EQ:1333"), "1612.35", ex=30)
    redis_client.set(names.ROOM_KEY, 1)
    redis_client.sadd(names.REJECTED_KEY, "NSE_EQ:7")
    async with ws_stack(redis_url) as stack, connect(stack.gateway.ws_url) as ws:
        snap = await request(ws, {"action": "subscribe", "id": "s",
                                  "keys": ["NSE_EQ:1333", "NSE_EQ:7", "NSE_EQ:8"]})
        assert snap["type"] == "snapshot" and snap["id"] == "s"
        assert snap["prices"] == {"NSE_EQ:1333": {"ltp": 1612.35}} and snap["missing"] == []
        refused = await recv_json(ws)
        assert refused["type"] == "error" and refused["code"] == "not_carried", refused
        assert refused["keys"] == ["NSE_EQ:7", "NSE_EQ:8"] and refused["id"] == "s"
        assert "NSE_EQ:7, NSE_EQ:8" in refused["reason"]
        (cid,) = stack.gateway.connections
        assert stack.registry.keys(cid) == {"NSE_EQ:1333"}
        only = await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:9"]})
        assert only["type"] == "error" and only["keys"] == ["NSE_EQ:9"]  # no empty snapshot


async def test_ping_pong_and_unsubscribe(redis_url: str, redis_client: redis.Redis) -> None:
    async with ws_stack(redis_url) as stack, connect(stack.gateway.ws_url) as ws:
        assert (await request(ws, {"action": "ping"}))["type"] == "pong"
        await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:1", "NSE_EQ:2"]})
        reply = await request(ws, {"action": "unsubscribe", "keys": ["NSE_EQ:1", "NSE_EQ:7"]})
        assert reply == {"type": "unsubscribed", "keys": ["NSE_EQ:1"], "total": 1}
        (cid,) = stack.gateway.connections
        shard = stack.registry.shard(cid)
        refs = redis_client.hgetall(layout.shard_refs(shard))
        assert refs == {b"NSE_EQ:2": b"1"}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"action": "launch"}', "unknown action"),
        ('{"action": "subscribe"}', "needs a non-empty list of keys"),
        ('{"action": "subscribe", "keys": "NSE_EQ:1"}', "needs a non-empty list of keys"),
        ('{"action": "subscribe", "keys": ["NSE_EQ:1", "NASDAQ:AAPL"]}', "invalid keys"),
        ('{"action": "subscribe", "keys": [1333]}', "invalid keys"),
        ('{"action": "subscribe", "keys": ["NSE_EQ:' + "1" * 70000 + '"]}', "message too large"),
        # Nested ~1,000 deep: naming the value by its repr raised RecursionError (a 500).
        ('{"action": ' + "[" * 1000 + "]" * 1000 + "}", "unknown action"),
        ("[" * 3000 + "]" * 3000, "invalid JSON"),
    ],
)
async def test_hostile_messages_get_an_error_and_change_nothing(
    redis_url: str, redis_client: redis.Redis, message: str, reason: str
) -> None:
    async with ws_stack(redis_url) as stack, connect(stack.gateway.ws_url) as ws:
        await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:5"]})
        (cid,) = stack.gateway.connections
        before = stack.registry.keys(cid)
        await ws.send(message)
        reply = await recv_json(ws)
        assert reply["type"] == "error"
        assert reason in reply["reason"]
        assert stack.registry.keys(cid) == before
        # The connection is still usable after the error.
        assert (await request(ws, {"action": "ping"}))["type"] == "pong"


async def test_bad_keys_are_named(redis_url: str, redis_client: redis.Redis) -> None:
    async with ws_stack(redis_url) as stack, connect(stack.gateway.ws_url) as ws:
        reply = await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:1", "XX:1", "NSE_EQ:a"]})
        assert reply["type"] == "error"
        assert set(reply["invalid"]) == {"XX:1", "NSE_EQ:a"}


async def test_binary_frames_are_refused(redis_url: str, redis_client: redis.Redis) -> None:
    async with ws_stack(redis_url) as stack, connect(stack.gateway.ws_url) as ws:
        await ws.send(b'{"action": "ping"}')
        reply = await recv_json(ws)
        assert reply["type"] == "error"
        assert "binary" in reply["reason"]


async def test_subscription_limit_is_per_connection(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url, max_keys=5) as stack, connect(stack.gateway.ws_url) as ws:
        await request(ws, {"action": "subscribe", "keys": [f"NSE_EQ:{i}" for i in range(4)]})
        reply = await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:10", "NSE_EQ:11"]})
        assert reply["type"] == "error"
        assert "at most 5 keys" in reply["reason"]
        (cid,) = stack.gateway.connections
        assert len(stack.registry.keys(cid)) == 4
        # Re-subscribing already held keys plus one more still fits.
        reply = await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:0", "NSE_EQ:10"]})
        assert reply["type"] == "snapshot"
        assert len(stack.registry.keys(cid)) == 5
        too_many = {"action": "subscribe", "keys": [f"NSE_EQ:{i}" for i in range(6)]}
        assert (await request(ws, too_many))["type"] == "error"


async def test_disconnect_removes_the_connection(redis_url: str, redis_client: redis.Redis) -> None:
    async with ws_stack(redis_url) as stack:
        async with connect(stack.gateway.ws_url) as ws:
            await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:1"]})
            (cid,) = stack.gateway.connections
            assert stack.registry.count() == 1
        await wait_for(lambda: stack.registry.count() == 0)
        assert not redis_client.exists(layout.conn(cid), layout.conn_keys(cid))
        assert redis_client.hlen(layout.shard_refs(stack.registry.shard(cid))) == 0


async def test_unauthorized_connects_are_refused(redis_url: str, redis_client: redis.Redis) -> None:
    async with ws_stack(redis_url, secret=SECRET) as stack:
        url = stack.gateway.ws_url
        with pytest.raises(InvalidStatus) as missing:
            async with connect(url):
                pass
        assert missing.value.response.status_code == 401
        forged = mint_token("another-secret")
        with pytest.raises(InvalidStatus) as bad:
            async with connect(f"{url}?token={forged}"):
                pass
        assert bad.value.response.status_code == 403
        expired = mint_token(SECRET, ttl_seconds=60, now=1_000_000)
        with pytest.raises(InvalidStatus) as old:
            async with connect(f"{url}?token={expired}"):
                pass
        assert old.value.response.status_code == 403
        assert stack.registry.count() == 0
        async with connect(f"{url}?token={mint_token(SECRET, subject='alice')}") as ws:
            assert (await request(ws, {"action": "ping"}))["type"] == "pong"
            (cid,) = stack.gateway.connections
            assert redis_client.hget(layout.conn(cid), "subject") == b"alice"


async def test_pipelined_messages_are_each_answered(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url) as stack, connect(stack.gateway.ws_url) as ws:
        for i in range(5):
            await send_json(ws, {"action": "ping", "id": str(i)})
        replies = await drain(ws)
        assert [r["id"] for r in replies] == ["0", "1", "2", "3", "4"]
