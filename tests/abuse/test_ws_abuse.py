"""Abuse of the WebSocket API, end to end: real clients against the local API Gateway running
the handlers as `functions.ws.wiring.build_app` builds them from settings, on a real Redis.

API Gateway WebSocket APIs have no WAF: these are the application's own defences, each
outcome asserted from both sides (what the client sees, what Redis holds).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core import names
from core.instrument_master import SAMPLE_PATH, load_master
from core.redis_client import as_text
from functions.settings import Settings
from functions.ws.app import WsApp
from functions.ws.settings import RealtimeSettings
from functions.ws.wiring import build_app
from local.apigw import GatewayConfig, Handlers, LocalApiGateway
from local.apigw.client import boto3_client
from realtime import keys as layout
from realtime.registry import live_connections
from tests.realtime_support import connect, drain, recv_json, request, send_json, wait_for

HOME, NEIGHBOUR, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3"  # all loopback on Linux


@dataclass
class Guarded:
    gateway: LocalApiGateway
    app: WsApp

    def open(self, source_ip: str = HOME) -> Any:
        """A client connecting from `source_ip` (the gateway reports the socket's address)."""
        return connect(self.gateway.ws_url, local_addr=(source_ip, 0))


@contextlib.asynccontextmanager
async def guarded_stack(redis_url: str, **env: str) -> AsyncIterator[Guarded]:
    """The handlers with the deployment's admission settings (`env` overrides some)."""
    environ = {"REDIS_URL": redis_url, "WS_SHARDS": "2", **env}
    holder: dict[str, Any] = {}
    app = build_app(Settings.from_env(environ), RealtimeSettings.from_env(environ),
                    management=lambda event: holder["api"])
    handlers = Handlers(message=lambda e, c: app.message(e),
                        connect=lambda e, c: app.connect(e),
                        disconnect=lambda e, c: app.disconnect(e))
    gateway = LocalApiGateway(handlers, GatewayConfig())
    await gateway.start()
    holder["api"] = boto3_client(gateway)
    try:
        yield Guarded(gateway, app)
    finally:
        await gateway.stop()
        app.registry.close()


async def refused_status(guarded: Guarded, source_ip: str = HOME) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with guarded.open(source_ip):
            pass
    status: int = refused.value.response.status_code
    return status


def registered(redis_client: redis.Redis) -> set[str]:
    """Connection ids with a meta hash in Redis."""
    return {key.decode().removeprefix(layout.CONN_PREFIX)
            for key in redis_client.scan_iter(match=f"{layout.CONN_PREFIX}*")
            if not key.decode().endswith(layout.CONN_KEYS_SUFFIX)}


# --- registry flood ---------------------------------------------------------------------------


async def test_one_address_gets_its_cap_of_connections_and_refusals_leave_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with guarded_stack(redis_url, WS_MAX_CONNECTIONS_PER_IP="3") as stack, \
            contextlib.AsyncExitStack() as held:
        admitted = [await held.enter_async_context(stack.open()) for _ in range(3)]
        for _ in range(4):  # the flood goes on: every further upgrade is refused
            assert await refused_status(stack) == 429
        assert registered(redis_client) == set(stack.gateway.connections)
        assert live_connections(redis_client) == 3
        assert stack.app.registry.from_source_ip(HOME) == 3
        ttl = redis_client.ttl(layout.source_ip(HOME))
        assert 0 < ttl <= layout.MAX_CONNECTION_SECONDS + 1
        # The admitted ones work; another address is not affected by this one's cap.
        assert (await request(admitted[0], {"action": "ping"}))["type"] == "pong"
        async with stack.open(NEIGHBOUR) as other:
            assert (await request(other, {"action": "ping"}))["type"] == "pong"
            assert stack.app.registry.from_source_ip(NEIGHBOUR) == 1
        # `$disconnect` frees the slot in the same script that forgets the connection.
        await admitted[0].close()
        await wait_for(lambda: stack.app.registry.from_source_ip(HOME) == 2)
        async with stack.open() as again:
            assert (await request(again, {"action": "ping"}))["type"] == "pong"
    await wait_for(lambda: not redis_client.exists(layout.source_ip(HOME)))


async def test_a_full_registry_refuses_with_503_and_concurrent_connects_never_pass_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with guarded_stack(redis_url, WS_MAX_CONNECTIONS="4") as stack, \
            contextlib.AsyncExitStack() as held:

        async def attempt(source_ip: str) -> ClientConnection | int:
            try:
                return await held.enter_async_context(stack.open(source_ip))
            except InvalidStatus as exc:
                return int(exc.response.status_code)

        outcomes = await asyncio.gather(*(attempt(ip) for ip in [HOME, NEIGHBOUR] * 5))
        clients = [o for o in outcomes if isinstance(o, ClientConnection)]
        assert len(clients) == 4
        assert sorted(o for o in outcomes if isinstance(o, int)) == [503] * 6
        assert live_connections(redis_client) == 4
        assert registered(redis_client) == set(stack.gateway.connections)
        assert await refused_status(stack, STRANGER) == 503  # a fresh address too: it is full
        assert not redis_client.exists(layout.source_ip(STRANGER))
        await clients[0].close()
        await wait_for(lambda: live_connections(redis_client) == 3)
        async with stack.open(STRANGER) as late:
            assert (await request(late, {"action": "ping"}))["type"] == "pong"


# --- subscribe flood --------------------------------------------------------------------------


async def test_unknown_instruments_are_refused_once_the_master_is_loaded(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with guarded_stack(redis_url) as stack, stack.open() as ws:
        (cid,) = stack.gateway.connections
        # No master loaded: every valid key is accepted, as before.
        before = await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:999001"]})
        assert before["type"] == "snapshot" and before["missing"] == ["NSE_EQ:999001"]
        load_master(SAMPLE_PATH, redis=redis_client)
        known = sorted(map(as_text, redis_client.hkeys(names.INSTRUMENT_SYMBOLS_KEY)))[:2]
        unknown = ["NSE_EQ:999002", "IDX_I:7"]
        snap = await request(ws, {"action": "subscribe", "id": "s", "keys": [*known, *unknown]})
        assert snap["type"] == "snapshot" and snap["id"] == "s"
        assert sorted([*snap["prices"], *snap["missing"]]) == known
        refused = await recv_json(ws)
        assert refused["type"] == "error" and refused["code"] == "unknown_instrument", refused
        assert refused["keys"] == unknown and refused["id"] == "s"
        assert "NSE_EQ:999002, IDX_I:7" in refused["reason"]
        # Only unknown keys: the error alone, no empty snapshot.
        alone = await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:999003"]})
        assert alone["type"] == "error" and alone["keys"] == ["NSE_EQ:999003"]
        assert await drain(ws, 0.2) == []
        # Redis holds nothing for the refused keys.
        assert stack.app.registry.keys(cid) == {"NSE_EQ:999001", *known}
        shard = stack.app.registry.shard(cid)
        for held in (layout.shard_refs(shard), names.DEMAND_KEY):
            assert set(map(as_text, redis_client.hkeys(held))) == {"NSE_EQ:999001", *known}


async def test_key_counts_over_the_cap_are_refused_and_record_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    keys = [f"NSE_FNO:{100000 + i}" for i in range(501)]  # the default cap is 500
    async with guarded_stack(redis_url) as stack, stack.open() as ws:
        (cid,) = stack.gateway.connections
        whole = await request(ws, {"action": "subscribe", "keys": keys})
        assert whole["type"] == "error" and whole["code"] == "too_many_keys", whole
        assert "at most 500 keys" in whole["reason"]
        assert not redis_client.exists(layout.conn_keys(cid), names.DEMAND_KEY)
        assert (await request(ws, {"action": "subscribe", "keys": keys[:400]}))["type"] == \
            "snapshot"
        over = await request(ws, {"action": "subscribe", "keys": keys[400:]})
        assert over["type"] == "error" and over["code"] == "too_many_keys", over
        assert "400 already subscribed" in over["reason"]
        assert redis_client.hlen(layout.conn_keys(cid)) == 400
        assert redis_client.hlen(names.DEMAND_KEY) == 400
        assert (await request(ws, {"action": "subscribe", "keys": keys[400:500]}))["type"] == \
            "snapshot"
        assert redis_client.hlen(layout.conn_keys(cid)) == 500


# --- message flood ----------------------------------------------------------------------------


async def test_ping_spam_gets_one_error_then_silence_then_is_disconnected(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """At the deployment's defaults (5 per second, bursts of 20, 3 strikes): the spammer's
    burst is answered, then ONE `rate_limited`, then nothing, then DeleteConnection closes it;
    meanwhile another client's subscribe is answered within a second."""
    redis_client.set(names.ltp_key("NSE_EQ:1333"), "1612.35", ex=30)
    async with guarded_stack(redis_url) as stack, stack.open() as spammer, \
            stack.open(NEIGHBOUR) as other:
        spam_id = next(cid for cid, c in stack.gateway.connections.items()
                       if c.info.source_ip == HOME)
        received: list[dict[str, Any]] = []

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for raw in spammer:
                    received.append(orjson.loads(raw))

        reader = asyncio.create_task(read())
        sent = 0

        async def spam() -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await spammer.send('{"action": "ping"}')
                    sent += 1
                    await asyncio.sleep(0)

        spamming = asyncio.create_task(spam())
        await wait_for(lambda: any(m["type"] == "error" for m in received))
        # While the spammer is limited, a neighbour is served as usual.
        snap = await request(other, {"action": "subscribe", "keys": ["NSE_EQ:1333"]}, 1.0)
        assert snap["type"] == "snapshot" and snap["prices"] == {"NSE_EQ:1333": {"ltp": 1612.35}}
        await asyncio.wait_for(reader, 10.0)  # the server closed the spammer
        await asyncio.wait_for(spamming, 5.0)
        assert spammer.close_code == 1000
        errors = [m for m in received if m["type"] == "error"]
        assert len(errors) == 1, errors
        (limited,) = errors
        assert limited["code"] == "rate_limited" and limited["retry_after_ms"] == 1000
        assert received[-1] == limited  # silence after it
        pongs = [m for m in received if m["type"] == "pong"]
        # The burst, and what refilled (5/s) while a loaded machine handled it; then nothing.
        assert 20 <= len(pongs) == len(received) - 1 < 50, len(pongs)
        assert sent > len(received) * 3  # most were dropped unanswered
        # Forgotten: the registry, its per-address slot; the neighbour is untouched.
        await wait_for(lambda: spam_id not in registered(redis_client))
        assert stack.app.registry.from_source_ip(HOME) == 0
        assert (await request(other, {"action": "ping"}, 1.0))["type"] == "pong"
        # The spammer's address cools off: its reconnect is refused, other addresses are not.
        assert await refused_status(stack) == 429
        assert 0 < redis_client.ttl(layout.cool_off(HOME)) <= 600
        async with stack.open(STRANGER) as stranger:
            assert (await request(stranger, {"action": "ping"}, 1.0))["type"] == "pong"
        redis_client.delete(layout.cool_off(HOME))  # once it has expired
        async with stack.open() as again:
            assert (await request(again, {"action": "ping"}, 1.0))["type"] == "pong"


async def test_a_page_paced_client_is_never_limited(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A page opens with a subscribe and a ping, then re-subscribes on each watchlist change;
    even ten quick changes in a row stay within the burst."""
    async with guarded_stack(redis_url) as stack, stack.open() as ws:
        await send_json(ws, {"action": "subscribe", "keys": ["NSE_EQ:1"]})
        await send_json(ws, {"action": "ping"})
        for i in range(10):
            await send_json(ws, {"action": "subscribe", "keys": [f"NSE_EQ:{i + 2}"]})
        replies = await drain(ws, 0.5)
        assert [r["type"] for r in replies] == ["snapshot", "pong", *["snapshot"] * 10]


# --- hostile messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ('{"action": "subscribe", "keys": ["NSE_EQ:' + "1" * 70000 + '"]}', "message too large"),
        (b'{"action": "ping"}', "binary messages are not supported"),
        (b"\x00\xff\xfe", "binary messages are not supported"),
        ("\u0000 not json", "invalid JSON"),
        ('{"action": "ping"', "invalid JSON"),
        ("[" * 5000 + "]" * 5000, "invalid JSON (depth limit exceeded)"),
        ('{"action": ' + "[" * 1000 + "]" * 1000 + "}", "unknown action 'a JSON array'"),
        ('{"action": "subscribe", "keys": [' + "[" * 1000 + "]" * 1000 + "]}", "invalid keys"),
        ('{"action": "subscribe", "keys": [' + '{"a":' * 900 + "1" + "}" * 900 + "]}",
         "invalid keys"),
    ],
)
async def test_hostile_messages_get_a_clear_error_and_change_nothing(
    redis_url: str, redis_client: redis.Redis, message: str | bytes, reason: str
) -> None:
    async with guarded_stack(redis_url) as stack, stack.open() as ws:
        await request(ws, {"action": "subscribe", "keys": ["NSE_EQ:5"]})
        (cid,) = stack.gateway.connections
        before = {key: redis_client.dump(key) for key in sorted(redis_client.keys("ws:*"))
                  if key != layout.conn(cid).encode()}  # its meta holds its token bucket
        await ws.send(message)
        reply = await recv_json(ws)
        assert reply["type"] == "error" and reason in reply["reason"], reply
        assert len(orjson.dumps(reply)) < 1024  # never an echo of what was sent
        after = {key: redis_client.dump(key) for key in sorted(redis_client.keys("ws:*"))
                 if key != layout.conn(cid).encode()}
        assert after == before
        assert (await request(ws, {"action": "ping"}))["type"] == "pong"
