"""The local run's stand-in for Lambda's async invoke of the fan-out (`relay.invoke.Invoker`).

In AWS each window's invokes start concurrent Lambda invocations; here the fan-out code runs in
worker threads of this process, with the same payloads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from realtime.contracts import FanoutPayload
from realtime.window import fold_payloads

log = logging.getLogger(__name__)


class LocalInvoker:
    """Runs the fan-out code in worker threads, one run at a time per shard.

    When a shard's fan-out is still running as its next window closes, the new window waits
    in one slot per shard and later windows are folded into it (newest version per key): a
    machine that cannot post as fast as the windows close gets fewer, fuller messages and a
    bounded delay instead of an ever-growing queue of stale windows.
    """

    def __init__(self, *, run: Callable[[FanoutPayload], Any], threads: int = 8) -> None:
        self._run = run
        # Not the default executor: busy fan-outs must not delay the gateway's handler calls.
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fanout-shard")
        self._running: set[int] = set()
        self._waiting: dict[int, FanoutPayload] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.results: list[Any] = []
        self.errors = 0
        self.folded = 0  # windows merged into a waiting one because the shard was busy

    async def invoke(self, payload: FanoutPayload) -> None:
        shard = int(payload["shard"])
        if shard in self._running:
            waiting = self._waiting.get(shard)
            if waiting is None:
                self._waiting[shard] = {**payload, "updates": list(payload["updates"])}
            else:
                self._waiting[shard] = fold_payloads(waiting, payload)
                self.folded += 1
            return
        self._running.add(shard)
        task = asyncio.create_task(self._drive(shard, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, shard: int, payload: FanoutPayload | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            while payload is not None:
                try:
                    result = await loop.run_in_executor(self._executor, self._run, payload)
                except Exception:
                    self.errors += 1
                    log.exception("local fan-out of shard %s failed", shard)
                else:
                    self.results.append(result)
                    if len(self.results) > 1000:
                        del self.results[:500]
                payload = self._waiting.pop(shard, None)
        finally:
            self._running.discard(shard)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
