"""The local API Gateway: handshake, routes, event shapes, limits, boto3 on @connections."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from local.apigw import GatewayConfig, Handlers, LocalApiGateway
from local.apigw.client import InProcessManagement, boto3_client
from local.apigw.posting import MAX_CLIENT_BUFFER_BYTES
from tests.realtime_support import wait_for

EVENTS = Path(__file__).parent.parent / "events"


class Recorder:
    """Handlers that remember every event they were given."""

    def __init__(self, *, authorize: Any = None, connect_status: int = 200) -> None:
        self.events: list[dict[str, Any]] = []
        self._authorize = authorize
        self._connect_status = connect_status

    def handlers(self) -> Handlers:
        return Handlers(
            message=self.record,
            connect=lambda e, c: self.record(e, c) | {"statusCode": self._connect_status},
            disconnect=self.record,
            authorizer=self.authorize if self._authorize is not None else None,
        )

    def record(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.events.append(event)
        return {"statusCode": 200}

    def authorize(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        return self._authorize(event)

    def routes(self) -> list[str]:
        return [e["requestContext"]["routeKey"] for e in self.events]


def allow(effect: str) -> Any:
    def answer(event: dict[str, Any]) -> dict[str, Any]:
        return {"principalId": "p", "context": {"subject": "s"}, "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect,
                           "Resource": event["methodArn"]}]}}
    return answer


def fail(event: dict[str, Any]) -> Any:
    raise RuntimeError("Unauthorized")


def shape(value: Any) -> Any:
    """The key structure of an event (values dropped), to compare with AWS's."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return type(value).__name__


def assert_same_shape(ours: dict[str, Any], recorded: str, *, ignore: set[str]) -> None:
    theirs = json.loads((EVENTS / recorded).read_text())
    mine, want = shape(ours), shape(theirs)
    for key in set(want) - ignore:
        assert key in mine, f"{recorded}: missing {key}"
    context_keys = set(want["requestContext"]) - {"authorizer"}
    assert context_keys <= set(mine["requestContext"]), recorded
    for key in context_keys:
        assert mine["requestContext"][key] == want["requestContext"][key], key


async def test_events_have_api_gateway_shapes_and_routes() -> None:
    recorder = Recorder(authorize=allow("Allow"))
    async with LocalApiGateway(recorder.handlers()) as gateway:
        async with connect(gateway.ws_url + "?token=abc") as ws:
            await ws.send('{"action":"subscribe","keys":["NSE_EQ:1"]}')
            await ws.send('{"action":"nope"}')
            await ws.send("not json")
            await ws.send('{"action":"ping"}')
            await wait_for(lambda: len(recorder.events) == 6)
        await wait_for(lambda: len(recorder.events) == 7)
    assert recorder.routes() == ["$connect", "$connect", "subscribe", "$default", "$default",
                                 "ping", "$disconnect"]
    authorizer, connect_event, subscribe, *_, disconnect = recorder.events
    assert authorizer["type"] == "REQUEST"
    assert authorizer["queryStringParameters"] == {"token": "abc"}
    assert_same_shape(authorizer, "ws_authorizer.json", ignore=set())
    assert_same_shape(connect_event, "ws_connect.json", ignore=set())
    assert_same_shape(subscribe, "ws_message_subscribe.json", ignore=set())
    assert_same_shape(disconnect, "ws_disconnect.json", ignore=set())
    ids = {e["requestContext"]["connectionId"] for e in recorder.events}
    assert len(ids) == 1
    assert connect_event["requestContext"]["authorizer"]["subject"] == "s"
    assert subscribe["body"] == '{"action":"subscribe","keys":["NSE_EQ:1"]}'
    assert subscribe["requestContext"]["eventType"] == "MESSAGE"
    assert disconnect["requestContext"]["disconnectStatusCode"] == 1000


@pytest.mark.parametrize(("authorize", "connect_status", "expected"), [
    (fail, 200, 401), (allow("Deny"), 200, 403), (allow("Allow"), 403, 403),
    (allow("Allow"), 500, 500)])
async def test_refused_connects_fail_the_handshake(authorize: Any, connect_status: int,
                                                   expected: int) -> None:
    recorder = Recorder(authorize=authorize, connect_status=connect_status)
    async with LocalApiGateway(recorder.handlers()) as gateway:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(gateway.ws_url):
                pass
        assert refused.value.response.status_code == expected
        assert gateway.connections == {}
    assert "$disconnect" not in recorder.routes()


async def test_connections_endpoint_speaks_like_aws_to_boto3() -> None:
    recorder = Recorder()
    async with LocalApiGateway(recorder.handlers()) as gateway:
        api = boto3_client(gateway)
        async with connect(gateway.ws_url, user_agent_header="tester/1") as ws:
            (cid,) = gateway.connections
            await asyncio.to_thread(api.post_to_connection, ConnectionId=cid, Data=b'{"a":1}')
            assert await ws.recv() == '{"a":1}'
            info: Any = await asyncio.to_thread(api.get_connection,  # type: ignore[attr-defined]
                                                ConnectionId=cid)
            assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "tester/1"}
            assert info["ConnectedAt"] <= info["LastActiveAt"]

            def post(data: bytes, connection_id: str = cid) -> str:
                try:
                    api.post_to_connection(ConnectionId=connection_id, Data=data)
                except ClientError as exc:
                    return str(exc.response["Error"]["Code"])
                return "ok"

            assert await asyncio.to_thread(post, b"x", "unknown0000=") == "GoneException"
            assert await asyncio.to_thread(post, b"x" * (128 * 1024 + 1)) == \
                "PayloadTooLargeException"
            assert await asyncio.to_thread(post, b"y" * (128 * 1024)) == "ok"
            assert len(await ws.recv()) == 128 * 1024
            gateway.throttle.fail_next(2)
            codes = [await asyncio.to_thread(post, b"z") for _ in range(3)]
            assert codes == ["LimitExceededException", "LimitExceededException", "ok"]
            assert await ws.recv() == "z"
            # boto3 raises the modeled exception classes, not just a ClientError.
            with pytest.raises(api.exceptions.GoneException):  # type: ignore[attr-defined]
                await asyncio.to_thread(api.post_to_connection, ConnectionId="nope0000000=",
                                        Data=b"x")
            await asyncio.to_thread(api.delete_connection,  # type: ignore[attr-defined]
                                    ConnectionId=cid)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        await wait_for(lambda: recorder.routes()[-1:] == ["$disconnect"])
        assert await asyncio.to_thread(post, b"late") == "GoneException"


async def test_in_process_client_raises_the_same_errors() -> None:
    async with LocalApiGateway(Recorder().handlers()) as gateway:
        api = InProcessManagement(gateway)
        async with connect(gateway.ws_url) as ws:
            (cid,) = gateway.connections
            await asyncio.to_thread(api.post_to_connection, ConnectionId=cid, Data=b"hi")
            assert await ws.recv() == "hi"
            with pytest.raises(ClientError) as gone:
                await asyncio.to_thread(api.post_to_connection, ConnectionId="x", Data=b"hi")
            assert gone.value.response["Error"]["Code"] == "GoneException"


async def test_in_process_posts_keep_order_and_a_client_that_stops_reading_gets_429() -> None:
    async with LocalApiGateway(Recorder().handlers()) as gateway:
        api = InProcessManagement(gateway)
        async with connect(gateway.ws_url, max_size=None, max_queue=1, close_timeout=0.5) as ws:
            (cid,) = gateway.connections

            def post_many(n: int, size: int) -> list[str]:
                codes = []
                for i in range(n):
                    body = f"{i:06d}".encode() + b"x" * (size - 6)
                    try:
                        api.post_to_connection(ConnectionId=cid, Data=body)
                        codes.append("ok")
                    except ClientError as exc:
                        codes.append(exc.response["Error"]["Code"])
                return codes

            assert await asyncio.to_thread(post_many, 50, 100) == ["ok"] * 50
            received = [await asyncio.wait_for(ws.recv(), 5) for _ in range(50)]
            assert [int(str(m)[:6]) for m in received] == list(range(50))  # in order, all
            # Now the client reads nothing: once its unsent bytes pass the gateway's bound the
            # posts are refused as throttled instead of buffering without end.
            codes: list[str] = []
            while "LimitExceededException" not in codes and len(codes) < 400:  # <= 48 MB
                codes += await asyncio.to_thread(post_many, 20, 120_000)
            codes += await asyncio.to_thread(post_many, 20, 120_000)
            assert codes[0] == "ok"
            assert set(codes) == {"ok", "LimitExceededException"}
            # What the gateway holds for the client stays bounded (one message over the mark).
            await asyncio.sleep(0.1)  # let the accepted sends reach the transport
            transport = gateway.connections[cid].socket.transport
            assert transport.get_write_buffer_size() <= MAX_CLIENT_BUFFER_BYTES + 128 * 1024


async def test_idle_and_maximum_durations_close_connections() -> None:
    recorder = Recorder()
    config = GatewayConfig(idle_timeout=0.3, max_duration=60)
    async with LocalApiGateway(recorder.handlers(), config) as gateway:
        async with connect(gateway.ws_url) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        await wait_for(lambda: recorder.routes()[-1:] == ["$disconnect"])
        assert recorder.events[-1]["requestContext"]["disconnectStatusCode"] == 1001
    config = GatewayConfig(idle_timeout=60, max_duration=0.5)
    async with LocalApiGateway(Recorder().handlers(), config) as gateway:
        async with connect(gateway.ws_url) as ws:
            with pytest.raises(ConnectionClosed):
                while True:  # activity does not extend the maximum duration
                    await ws.send('{"action":"ping"}')
                    await asyncio.sleep(0.05)


async def test_messages_over_128_kb_close_the_socket() -> None:
    recorder = Recorder()
    async with LocalApiGateway(recorder.handlers()) as gateway:
        async with connect(gateway.ws_url, max_size=None) as ws:
            await ws.send("x" * (128 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert "$default" not in recorder.routes()


async def test_wrong_stage_is_refused() -> None:
    async with LocalApiGateway(Recorder().handlers()) as gateway:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(gateway.ws_url.replace("/local", "/prod")):
                pass
        assert refused.value.response.status_code == 403
