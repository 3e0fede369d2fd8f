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
