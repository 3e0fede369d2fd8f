"""The page's poller in headless Chromium when the HTTP API is busy: it honours `Retry-After`,
backs off exponentially with jitter, says so on the page, and resets after a success.

The stub (tests/web/stub_server.py) refuses the WebSocket here, so the poller is the page's only
source of prices; its HTTP API answers from a script (status, headers) and records when each
request arrived, so the waits are measured on the server's side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.web.stub_server import StubServer, wait_until

pytestmark = pytest.mark.browser

KEYS = [f"NSE_EQ:{2000 + i}" for i in range(4)]


Headers = dict[str, str] | Callable[[], dict[str, str]]  # a callable: made when answering


class BusyStub(StubServer):
    """The stub whose HTTP API first gives the scripted answers, then prices."""

    def __init__(self, script: list[tuple[int, Headers]], **kwargs: Any) -> None:
        super().__init__(KEYS, **kwargs)
        self.script = list(script)
        self.arrivals: list[float] = []  # time.monotonic() of every prices request
        self.state.ws_open = False  # no WebSocket: only the poller brings prices

    async def current_prices(self, request: Request) -> Response:
        self.arrivals.append(time.monotonic())
        if self.script:
            status, headers = self.script.pop(0)
            return JSONResponse({"error": "busy", "message": "slow down"}, status_code=status,
                                headers=headers() if callable(headers) else headers)  # fmt: skip
        return await super().current_prices(request)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


@pytest.fixture
def page_of(browser: Any) -> Iterator[Any]:
    contexts: list[Any] = []

    def open_page(stub: StubServer) -> Any:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(stub.url + "/")
        return page

    try:
        yield open_page
    finally:
        for context in contexts:
            context.close()


def all_priced(page: Any) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-ltp-cell')].every(c => c.dataset.price)"
    )


def test_a_429_with_retry_after_is_honoured_then_prices_show(page_of: Any) -> None:
    with BusyStub([(429, {"Retry-After": "2"})]).running() as stub:
        page = page_of(stub)
        page.wait_for_function(
            "() => document.getElementById('notice').textContent"
            ".startsWith('polling paused: server busy, retrying in ')"
        )
        notice = page.text_content("#notice") or ""
        assert notice in ("polling paused: server busy, retrying in 2 s",
                          "polling paused: server busy, retrying in 3 s"), notice  # fmt: skip
        assert len(stub.arrivals) == 1
        all_priced(page)
        first_gap = stub.gaps()[0]
        # Never before the 2 s asked (the page adds up to a fifth, jittered). Only the lower
        # bound is asserted: an upper one would measure the machine, not the page.
        assert first_gap >= 1.9, stub.gaps()
        # Prices again: the pause is over, its notice gone, the usual 1.5 s polls resume.
        page.wait_for_function("() => document.getElementById('notice').hidden")
        wait_until(lambda: len(stub.arrivals) >= 4, timeout=8)
        assert all(gap >= 1.2 for gap in stub.gaps()[1:3]), stub.gaps()
        assert page.get_attribute("#connection", "data-state") == "polling"


def test_an_http_date_retry_after_is_honoured(page_of: Any) -> None:
    def in_3_s() -> dict[str, str]:
        return {"Retry-After": formatdate(time.time() + 3, usegmt=True)}

    with BusyStub([(503, in_3_s)]).running() as stub:
        page = page_of(stub)
        all_priced(page)
        # An HTTP date has whole seconds: 2-3 s after it was written (up to a fifth more).
        assert stub.gaps()[0] >= 1.9, stub.gaps()


def test_failures_back_off_exponentially_and_a_success_resets(page_of: Any) -> None:
    """503s without Retry-After: base 200 ms, doubling, capped at 1.6 s, equal jitter (each
    wait between half and all of its ceiling); after the success, the usual interval."""
    script = [(503, {})] * 6
    options = {"pollIntervalMs": 300, "pollBackoffBaseMs": 200, "pollBackoffMaxMs": 1600}
    with BusyStub(script, options=options).running() as stub:
        page = page_of(stub)
        page.wait_for_function(
            "() => document.getElementById('notice').textContent.startsWith('polling paused')"
        )
        all_priced(page)
        gaps = stub.gaps()
        ceilings = [0.2, 0.4, 0.8, 1.6, 1.6, 1.6]
        # Each wait at least half its ceiling (equal jitter); a busy machine only adds.
        for gap, ceiling in zip(gaps[:6], ceilings, strict=True):
            assert gap >= ceiling / 2 - 0.05, (gaps, ceilings)
        assert sum(gaps[3:6]) > sum(gaps[:2])  # it grew
        wait_until(lambda: len(stub.arrivals) >= 10, timeout=8)
        # Reset by the success: the usual 300 ms again, below the capped backoff's waits.
        assert sum(stub.gaps()[6:9]) < sum(gaps[3:6]), stub.gaps()


def test_network_errors_back_off_too(page_of: Any) -> None:
    """The API unreachable (the request never completes in time): backed off, not hammered."""
    options = {"pollIntervalMs": 300, "pollTimeoutMs": 200, "pollBackoffBaseMs": 400,
               "pollBackoffMaxMs": 1600}  # fmt: skip

    class Hanging(BusyStub):
        async def current_prices(self, request: Request) -> Response:
            self.arrivals.append(time.monotonic())
            import asyncio

            await asyncio.sleep(1.0)  # past the page's 200 ms timeout
            return JSONResponse({})

    with Hanging([], options=options).running() as stub:
        page = page_of(stub)
        page.wait_for_function(
            "() => document.getElementById('notice').textContent"
            ".startsWith('polling paused: the HTTP API does not answer')"
        )
        time.sleep(4.0)
        # 200 ms timeouts every 300 ms would be ~8 requests in 4 s; backed off: far fewer.
        assert len(stub.arrivals) <= 6, stub.gaps()
        assert page.get_attribute("#connection", "data-state") == "offline"


def test_retry_after_parsing_and_the_delay_rule(page_of: Any) -> None:
    with BusyStub([]).running() as stub:
        page = page_of(stub)
        result = page.evaluate(
            """async () => {
            const { retryAfterMs, pollDelay, DEFAULTS } = await import('./js/feed.js');
            const now = Date.parse('2026-11-26T04:15:00Z');
            const parsed = ['2', ' 120 ', '0', 'Thu, 26 Nov 2026 04:15:07 GMT',
                            'Thu, 26 Nov 2026 04:14:00 GMT', '-1', '1.5', 'soon', '', null]
              .map(v => retryAfterMs(v, now));
            const low = () => 0, high = () => 0.999999;
            const delays = {
              first: [pollDelay(1, null, DEFAULTS, low), pollDelay(1, null, DEFAULTS, high)],
              capped: [pollDelay(40, null, DEFAULTS, low), pollDelay(40, null, DEFAULTS, high)],
              asked: [pollDelay(1, 2000, DEFAULTS, low), pollDelay(1, 2000, DEFAULTS, high)],
              askedLess: pollDelay(6, 1000, DEFAULTS, low),
              askedTooMuch: pollDelay(1, 3600 * 1000, DEFAULTS, low),
            };
            return { parsed, delays };
          }"""
        )
    assert result["parsed"] == [2000, 120000, 0, 7000, 0, None, None, None, None, None]
    delays = {k: [round(x) for x in v] if isinstance(v, list) else round(v)
              for k, v in result["delays"].items()}  # fmt: skip
    assert delays["first"] == [750, 1500]  # half the 1.5 s base, up to all of it
    assert delays["capped"] == [15000, 30000]  # the 30 s cap
    assert delays["asked"] == [2000, 2400]  # never before Retry-After, up to a fifth more
    assert delays["askedLess"] == 15000  # the backoff (6th failure: 15-30 s) outlasts it
    assert delays["askedTooMuch"] == 300000  # Retry-After is honoured up to 5 min
