"""Run a `FeedSimulator` on its own event loop in a background thread.

For synchronous callers (the official SDK's MarketFeed owns its loop, sync tests, benchmarks
that must not share a loop with the code they measure):

    with ThreadedFeedSimulator(SimConfig(rate=0)) as threaded:
        threaded.url
        threaded.call(threaded.sim.send_disconnect, 807)   # any coroutine method, by value
        threaded.sim.mute(True)                            # sync methods are thread-safe
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from local.dhan_sim.feed import FeedSimulator, SimConfig
from local.dhan_sim.prices import PriceBook
from local.dhan_sim.tokens import TokenAuthority

T = TypeVar("T")


class ThreadedFeedSimulator:
    def __init__(self, config: SimConfig | None = None, *, prices: PriceBook | None = None,
                 tokens: TokenAuthority | None = None):
        """`tokens`: shared with a `RestStandIn`, so that a renewal there kills the old token's
        feed sockets here."""
        self.config = config or SimConfig()
        self._prices = prices
        self._tokens = tokens
        self._sim: FeedSimulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def sim(self) -> FeedSimulator:
        if self._sim is None:
            raise RuntimeError("the simulator is not running")
        return self._sim

    @property
    def url(self) -> str:
        return self.sim.url

    def start(self, timeout: float = 10.0) -> ThreadedFeedSimulator:
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="dhan-sim-feed",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        ready.result(timeout)  # re-raises a failed start (e.g. the port is taken)
        return self

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 10.0) -> T:
        """Run `await fn(*args)` on the simulator's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("the simulator is not running")

        async def invoke() -> T:
            return await fn(*args)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    def _run(self, ready: Future[None]) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:  # reported to the starting thread
            if not ready.done():
                ready.set_exception(exc)

    async def _serve(self, ready: Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with FeedSimulator(self.config, prices=self._prices, tokens=self._tokens) as sim:
            self._sim = sim
            ready.set_result(None)
            await self._stop.wait()
        self._loop = None

    def __enter__(self) -> ThreadedFeedSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
