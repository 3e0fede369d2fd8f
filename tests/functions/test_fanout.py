"""The fan-out against the local @connections endpoint, with real boto3, clients and Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
import redis
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

import functions.fanout as module
from functions.fanout import handler
from functions.fanout.runner import Fanout
from functions.ws.management import ManagementApi
from local.apigw import GatewayConfig
from realtime import keys as layout
from tests.realtime_support import (
    Stack,
    connect,
    drain,
    recv_json,
    request,
    update,
    wait_for,
    ws_stack,
)

KEYS = [f"NSE_EQ:{i}" for i in range(1, 7)]


async def subscribe(ws: object, keys: list[str]) -> None:
    reply = await request(ws, {"action": "subscribe", "keys": keys})  # type: ignore[arg-type]
    assert reply["type"] == "snapshot"


def shard_payload(stack: Stack, cid: str, updates: list[dict[str, object]]) -> dict[str, object]:
    return {"shard": stack.registry.shard(cid), "window": 1, "published_at": 0.0,
            "updates": updates}


async def test_one_message_per_connection_with_only_its_keys(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url, shards=1) as stack:
        async with connect(stack.gateway.ws_url) as a, connect(stack.gateway.ws_url) as b:
            await subscribe(a, KEYS[:3])
            await subscribe(b, KEYS[2:5])
            fanout = stack.fanout()
            window = [update(k, 10 + i, 100.0 + i) for i, k in enumerate(KEYS)]
            result = await stack.run_fanout(fanout, {"shard": 0, "window": 1, "updates": window})
            got_a, got_b = await drain(a), await drain(b)
        assert result.connections == 2
        assert result.posts == 2
        assert len(got_a) == 1 and len(got_b) == 1
        assert got_a[0]["type"] == "screener_ltp_batch_update"
        assert sorted(u["key"] for u in got_a[0]["updates"]) == KEYS[:3]
        assert sorted(u["key"] for u in got_b[0]["updates"]) == KEYS[2:5]


async def test_a_late_window_never_regresses_a_price(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        await subscribe(ws, KEYS[:2])
        fanout = stack.fanout()
        newer = {"shard": 0, "window": 2,
                 "updates": [update(KEYS[0], 7, 101.0), update(KEYS[1], 3, 50.0)]}
        late = {"shard": 0, "window": 1,
                "updates": [update(KEYS[0], 6, 100.0), update(KEYS[1], 4, 51.0)]}
        await stack.run_fanout(fanout, newer)
        result = await stack.run_fanout(fanout, late)
        messages = await drain(ws)
        assert result.posts == 1
        assert [sorted((u["key"], u["version"]) for u in m["updates"]) for m in messages] == [
            [(KEYS[0], 7), (KEYS[1], 3)],
            [(KEYS[1], 4)],  # only the key that really moved on
        ]
        # Replaying the same window sends nothing at all.
        again = await stack.run_fanout(fanout, late)
        assert again.posts == 0
        assert await drain(ws, 0.2) == []


async def test_stream_never_goes_behind_the_snapshot(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.hset(layout.LATEST, KEYS[0], orjson.dumps(update(KEYS[0], 9, 99.5)))
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        snapshot = await request(ws, {"action": "subscribe", "keys": [KEYS[0]]})
        assert snapshot["prices"][KEYS[0]]["version"] == 9
        fanout = stack.fanout()
        await stack.run_fanout(fanout, {"shard": 0, "updates": [update(KEYS[0], 8, 99.0)]})
        await stack.run_fanout(fanout, {"shard": 0, "updates": [update(KEYS[0], 10, 99.75)]})
        messages = await drain(ws)
        assert [m["updates"][0]["version"] for m in messages] == [10]


async def test_gone_connections_are_removed(redis_url: str, redis_client: redis.Redis) -> None:
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        await subscribe(ws, KEYS[:1])
        # A connection API Gateway dropped without ever delivering $disconnect.
        stack.registry.connect("ghost000000=", meta={"connected_at": 0})
        stack.registry.subscribe("ghost000000=", KEYS[:2])
        assert stack.registry.count() == 2
        result = await stack.run_fanout(stack.fanout(), {
            "shard": 0, "updates": [update(KEYS[0], 1, 10.0), update(KEYS[1], 1, 20.0)]})
        assert result.gone == 1
        assert result.posts == 1
        assert stack.registry.count() == 1
        assert not redis_client.exists(layout.conn_keys("ghost000000="))
        refs = redis_client.hgetall(layout.shard_refs(0))
        assert refs == {KEYS[0].encode(): b"1"}
        assert len(await drain(ws)) == 1


async def test_throttled_posts_are_retried_within_the_window(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        await subscribe(ws, KEYS[:2])
        stack.gateway.throttle.fail_next(2)
        fanout = stack.fanout(retry_seconds=5.0, backoff_base=0.01)
        result = await stack.run_fanout(fanout, {"shard": 0, "updates": [update(KEYS[0], 1, 1.0)]})
        assert result.throttled == 2
        assert result.retried_ok == 1
        assert result.posts == 1 and result.deferred == 0
        messages = await drain(ws)
        assert len(messages) == 1


async def test_throttled_updates_are_carried_into_the_next_message(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        await subscribe(ws, KEYS[:3])
        fanout = stack.fanout(retry_seconds=0.0)
        stack.gateway.throttle.fail_next(1)
        first = await stack.run_fanout(fanout, {"shard": 0, "updates": [
            update(KEYS[0], 1, 10.0), update(KEYS[1], 1, 20.0)]})
        assert first.throttled == 1 and first.posts == 0
        assert first.deferred == 2
        assert redis_client.smembers(layout.PENDING_SHARDS) == {b"0"}
        assert await drain(ws, 0.2) == []
        # Next window: KEY0 moved on, KEY2 is new; KEY1 only comes from the carried update.
        second = await stack.run_fanout(fanout, {"shard": 0, "updates": [
            update(KEYS[0], 2, 11.0), update(KEYS[2], 1, 30.0)]})
        assert second.posts == 1
        (message,) = await drain(ws)
        assert sorted((u["key"], u["version"]) for u in message["updates"]) == [
            (KEYS[0], 2), (KEYS[1], 1), (KEYS[2], 1)]
        assert not redis_client.exists(layout.shard_carry(0))


async def test_pending_updates_go_out_even_without_new_ticks(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        await subscribe(ws, KEYS[:1])
        fanout = stack.fanout()
        stack.gateway.throttle.fail_next(1)
        await stack.run_fanout(fanout, {"shard": 0, "updates": [update(KEYS[0], 5, 10.0)]})
        result = await stack.run_fanout(fanout, {"shard": 0, "updates": []})
        assert result.posts == 1
        (message,) = await drain(ws)
        assert message["updates"][0]["version"] == 5


async def test_unsubscribed_keys_are_not_carried(redis_url: str, redis_client: redis.Redis) -> None:
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        await subscribe(ws, KEYS[:2])
        fanout = stack.fanout()
        stack.gateway.throttle.fail_next(1)
        await stack.run_fanout(fanout, {"shard": 0, "updates": [
            update(KEYS[0], 1, 10.0), update(KEYS[1], 1, 20.0)]})
        await request(ws, {"action": "unsubscribe", "keys": [KEYS[0]]})
        await stack.run_fanout(fanout, {"shard": 0, "updates": []})
        (message,) = await drain(ws)
        assert [u["key"] for u in message["updates"]] == [KEYS[1]]


async def test_big_windows_are_split_under_32_kb(redis_url: str, redis_client: redis.Redis) -> None:
    keys = [f"NSE_FNO:{100000 + i}" for i in range(600)]
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        await subscribe(ws, keys)
        window = [update(k, 1, 1234.55) | {"symbol": f"NIFTY26NOV{i}CE"}
                  for i, k in enumerate(keys)]
        result = await stack.run_fanout(stack.fanout(), {"shard": 0, "updates": window})
        raw = []
        while len(raw) < result.posts:
            raw.append(await ws.recv())
        assert result.posts >= 3
        assert all(len(m) <= 32 * 1024 for m in raw)
        got = [u["key"] for m in raw for u in orjson.loads(m)["updates"]]
        assert sorted(got) == sorted(keys)


async def test_expired_connections_are_swept(redis_url: str, redis_client: redis.Redis) -> None:
    async with ws_stack(redis_url, shards=1) as stack:
        stack.registry.connect("old00000000=", meta={}, connected_at=1_000.0)
        stack.registry.subscribe("old00000000=", KEYS[:2])
        assert stack.registry.count() == 0  # past its 2 h: not counted any more
        result = await stack.run_fanout(stack.fanout(), {"shard": 0, "updates": []})
        assert result.swept == 1
        assert redis_client.zcard(layout.CONNECTIONS) == 0
        assert redis_client.hlen(layout.shard_refs(0)) == 0


async def test_handler_entry_point_emits_metrics(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        await subscribe(ws, KEYS[:1])
        for name, value in {"REDIS_URL": redis_url, "WS_SHARDS": "1",
                            "WEBSOCKET_CALLBACK_URL": stack.gateway.callback_url,
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "local",
                            "AWS_SECRET_ACCESS_KEY": "local"}.items():
            monkeypatch.setenv(name, value)
        module._wired.cache_clear()
        try:
            answer = await asyncio.to_thread(
                handler, {"shard": 0, "updates": [update(KEYS[0], 1, 1.5)]}, None)
        finally:
            fanout, _ = module._wired()
            fanout.close()
            module._wired.cache_clear()
        assert answer["posts"] == 1
        message = await recv_json(ws)
        assert message["updates"][0]["ltp"] == 1.5
        out = capsys.readouterr().out
        emf = orjson.loads(out.strip().splitlines()[-1])
        directive = emf["_aws"]["CloudWatchMetrics"][0]
        assert {m["Name"] for m in directive["Metrics"]} >= {
            "Posts", "PostedBytes", "Gone", "Throttled", "FanoutDuration"}
        assert emf["Posts"] in (1.0, [1.0])


async def test_rate_throttling_spreads_posts(redis_url: str, redis_client: redis.Redis) -> None:
    config = GatewayConfig()
    async with ws_stack(redis_url, shards=1, config=config) as stack:
        clients = [await connect(stack.gateway.ws_url).__aenter__() for _ in range(6)]
        try:
            for ws in clients:
                await subscribe(ws, KEYS[:1])
            stack.gateway.throttle.limit_rate(50.0, burst=2)
            fanout: Fanout = stack.fanout(retry_seconds=5.0, backoff_base=0.02)
            payload = {"shard": 0, "updates": [update(KEYS[0], 1, 1.0)]}
            result = await stack.run_fanout(fanout, payload)
            assert result.posts == 6
            assert result.throttled > 0
            for ws in clients:
                assert len(await drain(ws, 0.1)) == 1
        finally:
            stack.gateway.throttle.limit_rate(None)
            for ws in clients:
                await ws.close()
        await wait_for(lambda: stack.registry.count() == 0)


async def test_subscriptions_are_read_again_only_when_they_changed(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url, shards=1) as stack:
        reads: list[str] = []
        original = stack.registry.subscriptions

        def counting(shard: int, **kwargs: Any) -> Any:
            reads.append("read")
            return original(shard, **kwargs)

        stack.registry.subscriptions = counting  # type: ignore[method-assign]
        fanout = stack.fanout()
        async with connect(stack.gateway.ws_url) as a:
            await subscribe(a, KEYS[:2])
            for version in (1, 2, 3):
                await stack.run_fanout(fanout, {"shard": 0, "updates": [
                    update(KEYS[0], version, 10.0 + version)]})
            assert len(reads) == 1  # three windows, one read
            assert len(await drain(a)) == 3
            # A new subscriber and an unsubscribe reach the very next window.
            async with connect(stack.gateway.ws_url) as b:
                await subscribe(b, KEYS[1:3])
                await request(a, {"action": "unsubscribe", "keys": [KEYS[1]]})
                await stack.run_fanout(fanout, {"shard": 0, "updates": [
                    update(KEYS[1], 4, 20.0), update(KEYS[2], 4, 30.0)]})
                assert len(reads) == 2
                assert await drain(a, 0.2) == []
                (message,) = await drain(b)
                assert sorted(u["key"] for u in message["updates"]) == KEYS[1:3]


# --- whatever happens after the claim, nothing claimed is lost ---------------------------------


class FaultyConnections:
    """`@connections` (the local gateway's, through boto3) that fails chosen connections."""

    def __init__(self, real: ManagementApi, *, on_post: Callable[[], None] | None = None) -> None:
        self._real = real
        self.errors: dict[str, BaseException] = {}
        self.blocked: dict[str, threading.Event] = {}
        self._on_post = on_post

    def post_to_connection(self, *, Data: bytes, ConnectionId: str) -> Any:  # noqa: N803
        if self._on_post is not None:
            self._on_post()
        if ConnectionId in self.blocked:
            self.blocked[ConnectionId].wait(30)
        if ConnectionId in self.errors:
            raise self.errors[ConnectionId]
        return self._real.post_to_connection(Data=Data, ConnectionId=ConnectionId)


class Context:
    """Lambda's context as the fan-out reads it."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def faulty_fanout(stack: Stack, connections: FaultyConnections, **options: Any) -> Fanout:
    options.setdefault("retry_seconds", 0.0)
    options.setdefault("max_workers", 8)
    fanout = Fanout(registry=stack.registry, management=connections, **options)
    stack.fanouts.append(fanout)
    return fanout


def connection_of(stack: Stack, key: str) -> str:
    (cid,) = [cid for cid, keys in stack.registry.subscriptions(0).floors.items() if key in keys]
    return cid


def carried(redis_client: redis.Redis) -> dict[str, set[tuple[str, int]]]:
    """Connection id -> the (key, version) pairs deferred for its next message."""
    found: dict[str, set[tuple[str, int]]] = {}
    entries: dict[bytes, bytes] = redis_client.hgetall(layout.shard_carry(0))  # type: ignore[assignment]
    for field, raw in entries.items():
        cid, _, key = field.decode().rpartition(" ")
        found.setdefault(cid, set()).add((key, orjson.loads(raw)["version"]))
    return found


def versions(messages: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(u["key"], u["version"]) for m in messages for u in m["updates"]}


AWS_AND_NETWORK_ERRORS = [
    ReadTimeoutError(endpoint_url="https://example/@connections"),
    ConnectTimeoutError(endpoint_url="https://example/@connections"),
    EndpointConnectionError(endpoint_url="https://example/@connections"),
    NoCredentialsError(),
    ClientError(cast(Any, {"Error": {"Code": "InternalServerErrorException", "Message": "x"},
                           "ResponseMetadata": {"HTTPStatusCode": 500}}), "PostToConnection"),
    ClientError(cast(Any, {"Error": {"Code": "ForbiddenException", "Message": "x"},
                           "ResponseMetadata": {"HTTPStatusCode": 403}}), "PostToConnection"),
    TimeoutError("timed out"),
    ConnectionResetError("reset by peer"),
]


@pytest.mark.parametrize("error", AWS_AND_NETWORK_ERRORS, ids=lambda e: type(e).__name__)
async def test_a_failed_post_of_any_kind_is_carried_into_the_next_message(
    redis_url: str, redis_client: redis.Redis, error: BaseException
) -> None:
    async with ws_stack(redis_url, shards=1) as stack:
        async with connect(stack.gateway.ws_url) as a, connect(stack.gateway.ws_url) as b:
            await subscribe(a, KEYS[:2])
            await subscribe(b, KEYS[2:4])
            connections = FaultyConnections(stack.management)
            connections.errors[connection_of(stack, KEYS[0])] = error
            fanout = faulty_fanout(stack, connections)
            window = [update(k, 3, 10.0 + i) for i, k in enumerate(KEYS[:4])]
            first = await stack.run_fanout(fanout, {"shard": 0, "updates": window})
            assert (first.posts, first.failed, first.deferred) == (1, 1, 2)
            assert versions(await drain(b)) == {(KEYS[2], 3), (KEYS[3], 3)}
            assert await drain(a, 0.2) == []
            assert redis_client.smembers(layout.PENDING_SHARDS) == {b"0"}
            connections.errors.clear()
            second = await stack.run_fanout(fanout, {"shard": 0, "updates": []})
            assert second.posts == 1 and second.deferred == 0
            assert versions(await drain(a)) == {(KEYS[0], 3), (KEYS[1], 3)}
            assert await drain(b, 0.2) == []
        assert carried(redis_client) == {}


@pytest.mark.parametrize("workers", [1, 8])
async def test_an_unexpected_exception_in_a_worker_is_settled_then_raised(
    redis_url: str, redis_client: redis.Redis, workers: int
) -> None:
    async with ws_stack(redis_url, shards=1) as stack:
        async with connect(stack.gateway.ws_url) as a, connect(stack.gateway.ws_url) as b:
            await subscribe(a, KEYS[:2])
            await subscribe(b, KEYS[2:4])
            connections = FaultyConnections(stack.management)
            failing = connection_of(stack, KEYS[0])
            connections.errors[failing] = RuntimeError("a bug in a post")
            fanout = faulty_fanout(stack, connections, max_workers=workers)
            window = [update(k, 5, 10.0 + i) for i, k in enumerate(KEYS[:4])]
            # Raised, so that Lambda counts the error and the event reaches the failure queue...
            with pytest.raises(RuntimeError, match="a bug in a post"):
                await stack.run_fanout(fanout, {"shard": 0, "updates": window})
            # ... but only after the other connection got its message and the failed one's
            # updates were deferred.
            assert versions(await drain(b)) == {(KEYS[2], 5), (KEYS[3], 5)}
            assert carried(redis_client) == {failing: {(KEYS[0], 5), (KEYS[1], 5)}}
            connections.errors.clear()
            again = await stack.run_fanout(fanout, {"shard": 0, "updates": []})
            assert again.posts == 1
            assert versions(await drain(a)) == {(KEYS[0], 5), (KEYS[1], 5)}


async def test_out_of_lambda_time_nothing_is_posted_and_everything_is_deferred(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url, shards=1) as stack:
        async with connect(stack.gateway.ws_url) as a, connect(stack.gateway.ws_url) as b:
            await subscribe(a, KEYS[:2])
            await subscribe(b, KEYS[2:3])
            fanout = stack.fanout(time_reserve_seconds=1.0)
            window = [update(k, 2, 10.0) for k in KEYS[:3]]
            # What is left of the invocation is the reserve for settling: no post starts.
            result = await asyncio.to_thread(fanout.run, {"shard": 0, "updates": window},
                                             Context(remaining_ms=1000))
            assert (result.posts, result.unsent, result.failed) == (0, 2, 0)
            assert result.deferred == 3
            assert await drain(a, 0.2) == [] and await drain(b, 0.2) == []
            assert redis_client.smembers(layout.PENDING_SHARDS) == {b"0"}
            later = await stack.run_fanout(fanout, {"shard": 0, "updates": []})
            assert later.posts == 2
            assert versions(await drain(a)) == {(KEYS[0], 2), (KEYS[1], 2)}
            assert versions(await drain(b)) == {(KEYS[2], 2)}


async def test_time_running_out_midway_defers_the_connections_not_yet_posted(
    redis_url: str, redis_client: redis.Redis
) -> None:
    now = [100.0]

    def one_second_per_post() -> None:
        now[0] += 1.0

    async with ws_stack(redis_url, shards=1) as stack:
        clients = [await connect(stack.gateway.ws_url).__aenter__() for _ in range(3)]
        try:
            for i, ws in enumerate(clients):
                await subscribe(ws, [KEYS[i]])
            connections = FaultyConnections(stack.management, on_post=one_second_per_post)
            fanout = faulty_fanout(stack, connections, max_workers=1, clock=lambda: now[0],
                                   time_reserve_seconds=1.0)
            window = [update(k, 4, 10.0) for k in KEYS[:3]]
            # 2.5 s left, 1 s reserved: the posts at +0 s and +1 s go, the third would start
            # at +2 s, past the 1.5 s left for posting.
            result = await asyncio.to_thread(fanout.run, {"shard": 0, "updates": window},
                                             Context(remaining_ms=2500))
            assert (result.posts, result.unsent, result.deferred) == (2, 1, 1)
            received = [versions(await drain(ws, 0.2)) for ws in clients]
            assert sorted(len(r) for r in received) == [0, 1, 1]
            later = await stack.run_fanout(fanout, {"shard": 0, "updates": []})
            assert later.posts == 1
            for i, ws in enumerate(clients):
                received[i] |= versions(await drain(ws, 0.2))
            assert received == [{(KEYS[i], 4)} for i in range(3)]
        finally:
            for ws in clients:
                await ws.close()


async def test_a_post_still_in_flight_at_the_deadline_is_given_up_and_deferred(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ws_stack(redis_url, shards=1) as stack:
        async with connect(stack.gateway.ws_url) as a, connect(stack.gateway.ws_url) as b:
            await subscribe(a, KEYS[:2])
            await subscribe(b, KEYS[2:3])
            connections = FaultyConnections(stack.management)
            stuck = connection_of(stack, KEYS[0])
            release = connections.blocked[stuck] = threading.Event()
            fanout = faulty_fanout(stack, connections, max_workers=4, time_reserve_seconds=1.0)
            window = [update(k, 6, 10.0) for k in KEYS[:3]]
            try:
                # The post to `stuck` hangs (until released below, after the run returned):
                # the run must not wait for it past the deadline.
                result = await asyncio.wait_for(asyncio.to_thread(
                    fanout.run, {"shard": 0, "updates": window}, Context(remaining_ms=1300)), 20)
            finally:
                release.set()
            assert result.unsent >= 1
            deferred = carried(redis_client)
            assert deferred[stuck] == {(KEYS[0], 6), (KEYS[1], 6)}
            # Nothing lost: the other connection got its update, or has it deferred too.
            assert versions(await drain(b)) | deferred.get(connection_of(stack, KEYS[2]),
                                                           set()) == {(KEYS[2], 6)}
            # The given-up post may land late (the same versions again: harmless); the carry
            # makes sure it does reach the connection.
            await stack.run_fanout(fanout, {"shard": 0, "updates": []})
            assert versions(await drain(a)) == {(KEYS[0], 6), (KEYS[1], 6)}


async def test_the_handler_bounds_the_posting_by_the_lambda_context(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with ws_stack(redis_url, shards=1) as stack, connect(stack.gateway.ws_url) as ws:
        await subscribe(ws, KEYS[:1])
        for name, value in {"REDIS_URL": redis_url, "WS_SHARDS": "1",
                            "WEBSOCKET_CALLBACK_URL": stack.gateway.callback_url,
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "local",
                            "AWS_SECRET_ACCESS_KEY": "local"}.items():
            monkeypatch.setenv(name, value)
        module._wired.cache_clear()
        try:
            answer = await asyncio.to_thread(
                handler, {"shard": 0, "updates": [update(KEYS[0], 1, 1.5)]}, Context(500))
        finally:
            fanout, _ = module._wired()
            fanout.close()
            module._wired.cache_clear()
        assert (answer["posts"], answer["unsent"], answer["deferred"]) == (0, 1, 1)
        assert await drain(ws, 0.2) == []
        emf = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert emf["Unsent"] in (1.0, [1.0])
