"""Shared pieces of the real-time tests: a local API Gateway wired to real handlers and Redis.

`ws_stack` starts `LocalApiGateway` with `WsApp` (real Redis, real boto3 posting its replies
over HTTP to the gateway's `@connections`), and hands out a `Fanout` using boto3 as well.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from websockets.asyncio.client import ClientConnection, connect

from functions.fanout.runner import Fanout
from functions.ws.app import WsApp
from functions.ws.management import ManagementApi
from local.apigw import GatewayConfig, Handlers, LocalApiGateway
from local.apigw.client import boto3_client
from realtime.registry import ConnectionRegistry


@dataclass
class Stack:
    gateway: LocalApiGateway
    app: WsApp
    registry: ConnectionRegistry
    redis: redis.Redis
    management: ManagementApi
    fanouts: list[Fanout] = field(default_factory=list)

    def fanout(self, **options: Any) -> Fanout:
        options.setdefault("retry_seconds", 0.0)
        options.setdefault("max_workers", 8)
        fanout = Fanout(registry=self.registry, management=self.management, **options)
        self.fanouts.append(fanout)
        return fanout

    async def run_fanout(self, fanout: Fanout, payload: dict[str, Any]) -> Any:
        return await asyncio.to_thread(fanout.run, payload)


@contextlib.asynccontextmanager
async def ws_stack(
    redis_url: str,
    *,
    secret: str = "",
    shards: int = 2,
    max_keys: int = 1000,
    config: GatewayConfig | None = None,
    authorizer: bool = True,
) -> AsyncIterator[Stack]:
    client = redis.Redis.from_url(redis_url)
    registry = ConnectionRegistry(redis=client, shards=shards, max_keys=max_keys)
    holder: dict[str, ManagementApi] = {}
    app = WsApp(registry=registry, redis=client, management=lambda event: holder["api"],
                token_secret=lambda: secret)
    handlers = Handlers(
        message=lambda e, c: app.message(e),
        connect=lambda e, c: app.connect(e),
        disconnect=lambda e, c: app.disconnect(e),
        authorizer=(lambda e, c: app.authorize(e)) if authorizer else None,
    )
    gateway = LocalApiGateway(handlers, config or GatewayConfig())
    await gateway.start()
    holder["api"] = boto3_client(gateway)
    stack = Stack(gateway, app, registry, client, holder["api"])
    try:
        yield stack
    finally:
        await gateway.stop()
        for fanout in stack.fanouts:
            fanout.close()
        client.close()


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    message: dict[str, Any] = orjson.loads(raw)
    return message


async def send_json(ws: ClientConnection, message: Any) -> None:
    await ws.send(orjson.dumps(message).decode())


async def request(ws: ClientConnection, message: Any, timeout: float = 5.0) -> dict[str, Any]:
    await send_json(ws, message)
    return await recv_json(ws, timeout)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def drain(ws: ClientConnection, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Everything the client receives until it has been quiet for `quiet` seconds."""
    out = []
    while True:
        try:
            out.append(await recv_json(ws, quiet))
        except TimeoutError:
            return out


def update(key: str, version: int, ltp: float, ltt: int = 1_700_000_000) -> dict[str, Any]:
    segment, _, security_id = key.partition(":")
    return {"key": key, "segment": segment, "security_id": security_id, "ltp": ltp,
            "ltt": ltt, "version": version}


__all__ = ["Stack", "connect", "drain", "recv_json", "request", "send_json", "update",
           "wait_for", "ws_stack"]
