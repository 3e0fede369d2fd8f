"""Runs a `LocalStack` on its own thread and event loop, for tests that drive it from outside
(a browser, a synchronous WebSocket client, HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from local.run.stack import LocalStack, StackOptions


@dataclass
class RunningStack:
    stack: LocalStack
    loop: asyncio.AbstractEventLoop
    lines: list[str] = field(default_factory=list)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def running_stack(options: StackOptions, *, timeout: float = 30.0) -> Iterator[RunningStack]:
    started = threading.Event()
    box: dict[str, Any] = {}
    lines: list[str] = []

    def run() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            box["loop"], box["stop"] = asyncio.get_running_loop(), stop
            try:
                async with LocalStack(options, say=lines.append) as stack:
                    box["stack"] = stack
                    started.set()
                    await stop.wait()
            except BaseException as exc:
                box["error"] = exc
            finally:
                started.set()

        asyncio.run(main())

    thread = threading.Thread(target=run, name="ltp-local", daemon=True)
    thread.start()
    if not started.wait(timeout):
        raise AssertionError("the local stack did not start in time")
    if "error" in box:
        thread.join(timeout)
        raise box["error"]
    try:
        yield RunningStack(box["stack"], box["loop"], lines)
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout)
        assert not thread.is_alive(), "the local stack did not stop in time"
        if "error" in box:
            raise box["error"]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
