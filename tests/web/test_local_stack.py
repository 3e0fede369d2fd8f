"""The page against the whole local system (`ltp-local`), in headless Chromium.

The simulator ticks, the streamer writes Redis, the bridge and fan-out push through the local
API Gateway; the page must show every price, flash on changes, fall back to polling the HTTP API
(through its Mangum handler) while the WebSocket API is down, and go live again when it returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from local.run.stack import StackOptions, sample_keys
from tests.local.run_support import RunningStack, running_stack

pytestmark = pytest.mark.browser

CHANGED = (
    "first => [...document.querySelectorAll('.js-ltp-cell')]"
    ".some((c, i) => c.dataset.price !== undefined && c.dataset.price !== first[i])"
)


@pytest.fixture
def stack(redis_url: str, redis_client: redis.Redis) -> Iterator[RunningStack]:
    options = StackOptions(
        port=0, ws_port=0, redis_url=redis_url, rate=300.0,
        # Reconnect quickly once the WebSocket API is back (production backs off up to 15 s).
        page_options={"reconnectBaseMs": 100, "reconnectMaxMs": 1000},
    )
    with running_stack(options) as running:
        yield running


def prices(page: Any) -> list[str | None]:
    result: list[str | None] = page.eval_on_selector_all(
        "tr[data-instrument-key] .js-ltp-cell", "cells => cells.map(c => c.dataset.price)"
    )
    return result


def test_the_page_streams_falls_back_to_polling_and_recovers(
    page: Any, stack: RunningStack, artifacts: Path
) -> None:
    keys = [str(k) for k in sample_keys()]
    page.goto(stack.stack.page_url)

    # Every row shows a price within a few seconds, pushed over the WebSocket.
    page.wait_for_function(
        "n => document.querySelectorAll('.js-ltp-cell[data-price]').length === n", arg=len(keys)
    )
    page.wait_for_selector("#connection[data-state='live']")
    shown = page.eval_on_selector_all(
        "tr[data-instrument-key]", "rows => rows.map(r => r.dataset.instrumentKey)"
    )
    assert shown == keys
    assert page.text_content("tr[data-instrument-key='NSE_EQ:2885'] .js-symbol") == "RELIANCE"

    # Prices change, and a changed cell flashes green or red.
    page.wait_for_function(CHANGED, arg=prices(page))
    page.wait_for_selector(".js-ltp-cell.flash-up, .js-ltp-cell.flash-down")
    assert page.evaluate("window.screener.counters.messages") > 1
    page.screenshot(path=str(artifacts / "screener-live.png"), full_page=True)

    # The WebSocket API goes away: the page says so, polls, and prices keep moving.
    stack.call(stack.stack.stop_websocket())
    page.wait_for_selector("#connection[data-state='polling']")
    polls = page.evaluate("window.screener.counters.polls")
    page.wait_for_function(CHANGED, arg=prices(page))
    page.wait_for_function("n => window.screener.counters.polls > n", arg=polls)
    page.screenshot(path=str(artifacts / "screener-polling.png"))

    # It comes back: the page reconnects by itself and is live again.
    stack.call(stack.stack.start_websocket())
    page.wait_for_selector("#connection[data-state='live']")
    messages = page.evaluate("window.screener.counters.messages")
    page.wait_for_function("n => window.screener.counters.messages > n", arg=messages)
    page.wait_for_function(CHANGED, arg=prices(page))
    page.screenshot(path=str(artifacts / "screener.png"))
