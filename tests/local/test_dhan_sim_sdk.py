"""The official `dhanhq` SDK's WebSocket MarketFeed, pointed at the simulator, gets correct ticks.

The SDK's MarketFeed creates and installs its own event loop in its constructor, so it runs
entirely in a worker thread (constructed, used and closed there); the simulator stays on the
test's loop. The SDK parses only the first packet of a frame: one packet per frame here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import pytest
from dhanhq import DhanContext
from dhanhq.marketfeed import MarketFeed

from local.dhan_sim.feed import FeedSimulator, SimConfig
from local.dhan_sim.ticks import float32

CLIENT, TOKEN = "1000000001", "sim-token"
HDFC, TCS = ("NSE_EQ", "1333"), ("NSE_EQ", "11536")


def run_sdk(
    instruments: list[tuple[int, str, int]],
    count: int,
    *,
    on_close: Callable[[Any], None] | None = None,
    between: Callable[[int], None] | None = None,
) -> list[Any]:
    """Connect the SDK, read `count` messages with its own parser, close everything."""
    feed = MarketFeed(DhanContext(CLIENT, TOKEN), instruments, version="v2", on_close=on_close)
    try:
        feed.loop.run_until_complete(feed.connect())
        got = []
        for _ in range(count):
            got.append(feed.loop.run_until_complete(
                asyncio.wait_for(feed.get_instrument_data(), timeout=10)))  # fmt: skip
            if between is not None:
                between(len(got))
        return got
    finally:
        if feed.ws is not None:
            feed.loop.run_until_complete(feed.ws.close())
        feed.loop.close()
        asyncio.set_event_loop(None)


def hhmmss(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


@pytest.fixture
def point_sdk_at() -> Any:
    original = MarketFeed.market_feed_wss

    def point(url: str) -> None:
        MarketFeed.market_feed_wss = url

    yield point
    MarketFeed.market_feed_wss = original


async def test_official_marketfeed_receives_the_simulators_ticks(point_sdk_at: Any) -> None:
    cfg = SimConfig(rate=400.0, packets_per_frame=1, max_ticks=40, seed=5)
    async with FeedSimulator(cfg) as sim:
        point_sdk_at(sim.url)
        instruments = [(1, "1333", 15), (1, "11536", 17)]  # HDFC ticker, TCS quote
        got = await asyncio.to_thread(run_sdk, instruments, 2 + 40)
        assert sim.ticks_sent == 40
        codes = sorted(r.message["RequestCode"] for r in sim.requests)  # type: ignore[index]
        book = {key: sim.prices.get(key) for key in (HDFC, TCS)}

    assert codes == [15, 17]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for message in got:
        by_type.setdefault(message["type"], []).append(message)
    assert set(by_type) == {"Previous Close", "Ticker Data", "Quote Data"}
    assert len(by_type["Previous Close"]) == 2
    assert len(by_type["Ticker Data"]) + len(by_type["Quote Data"]) == 40
    assert {m["security_id"] for m in by_type["Ticker Data"]} == {1333}
    assert {m["security_id"] for m in by_type["Quote Data"]} == {11536}
    assert all(m["exchange_segment"] == 1 for m in got)

    for message in by_type["Previous Close"]:
        key = ("NSE_EQ", str(message["security_id"]))
        state = book[key]
        assert state is not None
        assert message["prev_close"] == f"{float32(state.prev_close):.2f}"

    # The newest tick the SDK parsed for each instrument is exactly what the simulator sent.
    for kind, key in (("Ticker Data", HDFC), ("Quote Data", TCS)):
        newest = by_type[kind][-1]
        ltp, ltt = sim.last_sent[key]
        assert newest["LTP"] == f"{ltp:.2f}"
        assert newest["LTT"] == hhmmss(ltt)
    quote = by_type["Quote Data"][-1]
    state = book[TCS]
    assert state is not None
    assert quote["volume"] == state.volume
    assert quote["high"] == f"{float32(state.high):.2f}"
    assert quote["low"] == f"{float32(state.low):.2f}"


async def test_official_marketfeed_sees_a_disconnect_packet(point_sdk_at: Any) -> None:
    # max_ticks=1: prev close and one price, then nothing until the disconnect packet.
    async with FeedSimulator(SimConfig(rate=50.0, packets_per_frame=1, max_ticks=1)) as sim:
        point_sdk_at(sim.url)
        closed: list[Any] = []
        loop = asyncio.get_running_loop()
        sending: list[Future[None]] = []

        def expire_after_the_price(received: int) -> None:
            if received == 2:  # not waited for here: the SDK must keep reading to close
                sending.append(asyncio.run_coroutine_threadsafe(sim.send_disconnect(807), loop))

        got = await asyncio.to_thread(
            run_sdk, [(1, "1333", 15)], 3, on_close=closed.append,
            between=expire_after_the_price,
        )  # fmt: skip
        await asyncio.wrap_future(sending[0])
    # prev close, the first price, then the 807 packet that the SDK turns into on_close.
    assert [m["type"] if m else m for m in got] == ["Previous Close", "Ticker Data", None]
    assert len(closed) == 1
    assert sim.disconnects_sent[-1][1] == 807
