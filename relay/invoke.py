"""How the bridge starts a fan-out: Lambda's async invoke (the local run has its own in
`local.invoker`)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from core.messages import dumps
from realtime.contracts import FanoutPayload


class Invoker(Protocol):
    """Starts one fan-out; must not wait for it to finish (Lambda `InvocationType=Event`)."""

    async def invoke(self, payload: FanoutPayload) -> None: ...


# An async invoke answers in milliseconds; a stuck one must not hold a window's thread for
# boto3's default 60 s read timeout and 3-5 attempts. A failed invoke's updates go into the
# next window (RelayBridge.close_window), so one retry here is enough.
CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
MAX_ATTEMPTS = 2


def lambda_client(*, threads: int = 16) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("lambda", config=Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=READ_TIMEOUT_SECONDS,
        retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        max_pool_connections=threads))  # fmt: skip


class LambdaInvoker:
    """`lambda_client` is boto3's `lambda` client (its stubs' kwargs-only signature defeats a
    structural Protocol, hence Any). Its own threads, so a window's invokes run side by side."""

    def __init__(self, *, lambda_client: Any, function_name: str, threads: int = 16) -> None:
        self._client = lambda_client
        self._function = function_name
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="invoke")

    async def invoke(self, payload: FanoutPayload) -> None:
        call = partial(self._client.invoke, FunctionName=self._function,
                       InvocationType="Event", Payload=dumps(dict(payload)))
        await asyncio.get_running_loop().run_in_executor(self._executor, call)
