"""The screener page's behaviour in headless Chromium, against a stub of the deployed APIs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.stub_server import WEB_DIR, StubServer, wait_until

pytestmark = pytest.mark.browser

KEYS = [f"NSE_EQ:{1000 + i}" for i in range(12)]


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(KEYS).running() as server:
        yield server


def ltp_texts(page: Any) -> list[str]:
    result: list[str] = page.eval_on_selector_all(
        "tr[data-instrument-key] .js-ltp-cell", "cells => cells.map(c => c.textContent)"
    )
    return result


def wait_price(page: Any, key: str, price: str) -> None:
    page.wait_for_function(
        "([key, price]) => document.querySelector("
        "`tr[data-instrument-key='${key}'] .js-ltp-cell`).dataset.price === price",
        arg=[key, price],
    )


def status(page: Any) -> str:
    state: str = page.get_attribute("#connection", "data-state")
    return state


def test_every_row_gets_a_price_and_the_page_goes_live(page: Any, stub: StubServer) -> None:
    page.goto(stub.url + "/")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-ltp-cell')].every(c => c.dataset.price)"
    )
    page.wait_for_selector("#connection[data-state='live']")
    assert page.locator("tr[data-instrument-key]").count() == len(KEYS)
    assert page.locator("#connection").text_content() == "live"
    assert "—" not in ltp_texts(page)
    assert stub.state.subscribed == [KEYS]
    page.wait_for_function("() => document.getElementById('price-age').dataset.ageMs !== ''")
    assert "newest price" in (page.text_content("#price-age") or "")
    page.wait_for_function(
        "() => document.getElementById('baseline-note').textContent"
        ".includes('first price this page received')"
    )


def test_prices_change_and_flash_green_or_red(page: Any, stub: StubServer) -> None:
    page.goto(stub.url + "/")
    page.wait_for_selector("#connection[data-state='live']")
    first = ltp_texts(page)
    page.wait_for_selector(".js-ltp-cell.flash-up, .js-ltp-cell.flash-down")
    page.wait_for_function(
        "first => [...document.querySelectorAll('.js-ltp-cell')]"
        ".some((c, i) => c.textContent !== first[i])",
        arg=first,
    )
    flashed = page.eval_on_selector_all("tr[data-flash]", "rows => rows.map(r => r.dataset.flash)")
    assert set(flashed) <= {"up", "down"} and flashed
    # A change cell is coloured by its sign against the baseline.
    page.wait_for_selector(".js-change-cell.up, .js-change-cell.down")


def test_an_older_version_never_replaces_a_newer_price(page: Any, stub: StubServer) -> None:
    target, marker = KEYS[0], KEYS[1]
    stub.state.frozen.update({target, marker})
    page.goto(stub.url + "/")
    page.wait_for_selector("#connection[data-state='live']")
    base = stub.state.versions[target]
    stub.send([{"key": target, "ltp": 4321.5, "version": base + 10}])
    wait_price(page, target, "4321.5")
    # A late, older value, then a marker on another row: once the marker shows, the late value
    # has been processed too (one socket delivers in order).
    stub.send([{"key": target, "ltp": 1.25, "version": base + 5}])
    stub.send([{"key": marker, "ltp": 777.0, "version": stub.state.versions[marker] + 1}])
    wait_price(page, marker, "777")
    cell = f"tr[data-instrument-key='{target}'] .js-ltp-cell"
    assert page.get_attribute(cell, "data-price") == "4321.5"
    assert page.evaluate("window.screener.book.stale") >= 1


def test_polls_while_the_websocket_is_down_and_goes_live_again(
    page: Any, stub: StubServer, artifacts: Path
) -> None:
    page.goto(stub.url + "/")
    page.wait_for_selector("#connection[data-state='live']")
    stub.cut()
    page.wait_for_selector("#connection[data-state='polling']")
    polls = stub.state.polls
    before = ltp_texts(page)
    page.wait_for_function(
        "first => [...document.querySelectorAll('.js-ltp-cell')]"
        ".some((c, i) => c.textContent !== first[i])",
        arg=before,
    )
    assert stub.state.polls > polls
    assert status(page) == "polling"
    page.screenshot(path=str(artifacts / "screener-stub-polling.png"))
    stub.restore()
    page.wait_for_selector("#connection[data-state='live']")
    # Live again: the poller stops (no request while live for longer than one interval).
    polls = stub.state.polls
    page.wait_for_timeout(1800)
    assert stub.state.polls <= polls + 1
    assert status(page) == "live"


def test_offline_when_neither_the_websocket_nor_the_api_answers(
    page: Any, stub: StubServer
) -> None:
    page.goto(stub.url + "/")
    page.wait_for_selector("#connection[data-state='live']")
    stub.state.api_ok = False
    stub.cut()
    page.wait_for_selector("#connection[data-state='offline']")
    stub.state.api_ok = True
    page.wait_for_selector("#connection[data-state='polling']")


def test_a_silent_socket_is_detected_by_ping_and_replaced(browser: Any) -> None:
    with StubServer(KEYS, options={"pingIntervalMs": 300, "pongTimeoutMs": 300}).running() as stub:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(stub.url + "/")
            page.wait_for_selector("#connection[data-state='live']")
            wait_until(lambda: stub.state.pings >= 2)
            connects = stub.state.connects
            stub.mute()  # the socket stays open but nothing comes back, pongs included
            wait_until(lambda: stub.state.connects > connects, timeout=8)
            page.wait_for_selector("#connection[data-state='live']")
            wait_until(lambda: not stub.muted)  # the page closed the mute socket itself
        finally:
            context.close()


def test_a_socket_the_server_forgot_reconnects_and_subscribes_again(browser: Any) -> None:
    """After a cache wipe the server answers `error` code `reconnect` to ping and subscribe:
    the page opens a new socket, subscribes its whole watchlist again and is live."""
    with StubServer(KEYS, options={"pingIntervalMs": 300}).running() as stub:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(stub.url + "/")
            page.wait_for_selector("#connection[data-state='live']")
            connects, subscribes = stub.state.connects, len(stub.state.subscribed)
            stub.forget()
            wait_until(lambda: stub.state.connects > connects, timeout=8)
            wait_until(lambda: len(stub.state.subscribed) > subscribes)
            assert stub.state.subscribed[-1] == KEYS
            page.wait_for_selector("#connection[data-state='live']")
            wait_until(lambda: not stub.forgotten)  # the page closed the forgotten socket
            stub.send([{"key": KEYS[0], "ltp": 4321.5, "version": 10_000}])
            wait_price(page, KEYS[0], "4321.5")
        finally:
            context.close()


def test_rows_the_feed_cannot_carry_say_so(browser: Any) -> None:
    with StubServer(KEYS).running() as stub:
        stub.state.not_carried.update(KEYS[-2:])
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(stub.url + "/")
            page.wait_for_selector("#connection[data-state='live']")
            page.wait_for_selector(f"tr[data-instrument-key='{KEYS[-1]}'][data-not-streamed]")
            marked = page.eval_on_selector_all(
                "tr[data-not-streamed]", "rows => rows.map(r => r.dataset.instrumentKey)")
            assert marked == KEYS[-2:]
            assert page.text_content(
                f"tr[data-instrument-key='{KEYS[-1]}'] .js-not-streamed") == "not streamed"
            assert page.locator(".js-not-streamed").count() == 2
            assert KEYS[-1] in (page.text_content("#notice") or "")
        finally:
            context.close()


def test_a_stalled_socket_in_market_hours_polls_until_prices_flow_again(browser: Any) -> None:
    """Pings answered, yet no price arrives: after `silenceMs` (market hours forced on) the
    page probes, says it is not live, and polls; prices on the socket make it live again."""
    options = {"silenceMs": 1000, "marketHours": "always"}
    with StubServer(KEYS, options=options).running() as stub:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(stub.url + "/")
            page.wait_for_selector("#connection[data-state='live']")
            pings, polls = stub.state.pings, stub.state.polls
            stub.stall()
            page.wait_for_selector("#connection[data-state='polling']")
            wait_until(lambda: stub.state.pings > pings)  # the probe
            wait_until(lambda: stub.state.polls > polls + 1)
            assert stub.state.connects == 1  # the socket is known: no reconnect
            stub.resume()
            stub.send([{"key": KEYS[1], "ltp": 4321.5, "version": 10_000}])
            page.wait_for_selector("#connection[data-state='live']")
            wait_price(page, KEYS[1], "4321.5")
        finally:
            context.close()


def test_a_silent_socket_the_server_forgot_is_replaced_without_waiting_for_a_ping(
    browser: Any,
) -> None:
    """After a cache wipe nothing reaches the old socket: the silence probe (not the 4-minute
    ping) finds out, and a new socket subscribes again."""
    options = {"silenceMs": 1000, "marketHours": "always"}
    with StubServer(KEYS, options=options).running() as stub:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(stub.url + "/")
            page.wait_for_selector("#connection[data-state='live']")
            connects, subscribes = stub.state.connects, len(stub.state.subscribed)
            stub.forget()
            wait_until(lambda: stub.state.connects > connects, timeout=8)
            wait_until(lambda: len(stub.state.subscribed) > subscribes)
            page.wait_for_selector("#connection[data-state='live']")
        finally:
            context.close()


def test_silence_outside_market_hours_is_not_a_fault(browser: Any) -> None:
    options = {"silenceMs": 300, "marketHours": "never", "pingIntervalMs": 200}
    # tick_every 3600: no price after the snapshot; pings every 200 ms keep the socket busy
    with StubServer(KEYS, options=options, tick_every=3600).running() as stub:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(stub.url + "/")
            page.wait_for_selector("#connection[data-state='live']")
            pings = stub.state.pings
            wait_until(lambda: stub.state.pings >= pings + 8, timeout=8)  # well past silenceMs
            assert stub.state.connects == 1 and status(page) == "live"
        finally:
            context.close()


def test_the_connection_is_replaced_before_api_gateways_two_hour_limit(browser: Any) -> None:
    options = {"maxConnectionMs": 1500, "rotationJitterMs": 0}
    with StubServer(KEYS, options=options).running() as stub:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(stub.url + "/")
            page.wait_for_selector("#connection[data-state='live']")
            wait_until(lambda: stub.state.connects >= 3, timeout=8)
            # Make before break: the page never left "live" to poll in between.
            assert status(page) == "live"
            assert page.evaluate("window.screener.counters.polls") <= 1
        finally:
            context.close()


def test_the_token_from_config_is_sent_and_a_fresh_one_fetched_on_reconnect(
    browser: Any,
) -> None:
    with StubServer(KEYS, token="t0k3n").running() as stub:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(stub.url + "/")
            page.wait_for_selector("#connection[data-state='live']")
            assert stub.state.refused == 0
            stub.state.token = "rotated"  # as a server minting per request would
            stub.cut()
            page.wait_for_selector("#connection[data-state='polling']")
            stub.restore()
            page.wait_for_selector("#connection[data-state='live']")
        finally:
            context.close()


def test_five_hundred_rows_render_with_updates_batched_per_frame(browser: Any) -> None:
    keys = [f"NSE_EQ:{10_000 + i}" for i in range(500)]
    with StubServer(keys, keys_per_tick=100, tick_every=0.02).running() as stub:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(stub.url + "/")
            page.wait_for_function(
                "() => document.querySelectorAll('.js-ltp-cell[data-price]').length === 500"
            )
            page.wait_for_function("() => window.screener.counters.applied > 3000", timeout=15_000)
            applied, flushes = page.evaluate(
                "[window.screener.counters.applied, window.screener.view.flushes]"
            )
            # Thousands of updates, a few writes to the DOM: one per animation frame at most.
            assert flushes * 5 < applied
            assert stub.state.subscribed == [keys]  # one subscribe message (<= 500 keys each)
        finally:
            context.close()


def test_the_query_string_chooses_the_watchlist(page: Any, stub: StubServer) -> None:
    page.goto(stub.url + f"/?keys={KEYS[3]},{KEYS[4]},bogus")
    page.wait_for_selector("#connection[data-state='live']")
    shown = page.eval_on_selector_all(
        "tr[data-instrument-key]", "rows => rows.map(r => r.dataset.instrumentKey)"
    )
    assert shown == [KEYS[3], KEYS[4]]


def test_the_default_watchlist_matches_the_shipped_sample() -> None:
    from core.instrument_master import SAMPLE_PATH, open_source, parse_scrip_master

    with open_source(SAMPLE_PATH) as lines:
        sample = [(str(i.key), i.symbol) for i in parse_scrip_master(lines)]
    shipped = json.loads((WEB_DIR / "watchlist.json").read_text())
    assert [(i["key"], i["symbol"]) for i in shipped["instruments"]] == sample


def test_price_rules_and_message_shapes_in_the_page_modules(page: Any, stub: StubServer) -> None:
    page.goto(stub.url + "/")
    result = page.evaluate(
        """async () => {
        const { PriceBook, valuesOf, BASELINE_PREV_CLOSE } = await import('./js/prices.js');
        const { backoffDelay } = await import('./js/feed.js');
        const book = new PriceBook([{ key: 'NSE_EQ:1', symbol: 'A' }, { key: 'NSE_EQ:2' }]);
        const out = {};
        out.first = book.apply('NSE_EQ:1', { ltp: 100, version: 5 }, 1000).change;
        out.older = book.apply('NSE_EQ:1', { ltp: 90, version: 4 }, 1001);
        out.same = book.apply('NSE_EQ:1', { ltp: 100, version: 5 }, 1002);
        const up = book.apply('NSE_EQ:1', { ltp: '101.5', version: 6, symbol: 'AA' }, 1003);
        out.up = [up.ltp, up.direction, up.change, up.symbol];
        out.unversioned = book.apply('NSE_EQ:1', { ltp: 99 }, 1004).direction;
        out.bad = [book.apply('NSE_EQ:1', { ltp: 'x' }, 1), book.apply('NSE_EQ:9', { ltp: 1 }, 1),
                   book.apply('NSE_EQ:1', { ltp: -1 }, 1), book.apply('NSE_EQ:1', null, 1)];
        const pc = book.apply('NSE_EQ:2', { ltp: 110, prev_close: 100 }, 1005);
        out.prevClose = [pc.change, pc.changePct, pc.baselineKind === BASELINE_PREV_CLOSE];
        out.unpriced = new PriceBook([{ key: 'NSE_EQ:3' }]).unpriced();
        out.newest = book.newestAt;
        out.shapes = [
          valuesOf({ type: 'snapshot', prices: { 'NSE_EQ:1': { ltp: 1, version: 2 },
                                                 'NSE_EQ:2': null }, missing: ['NSE_EQ:2'] }),
          valuesOf({ prices: { 'NSE_EQ:1': 3.5 }, prev_close: { 'NSE_EQ:1': 3 } }),
          valuesOf({ type: 'screener_ltp_update', segment: 'NSE_EQ', security_id: '7', ltp: 2 }),
          valuesOf({ type: 'screener_ltp_batch_update',
                     updates: [{ key: 'IDX_I:13', ltp: 1, version: 1 }, 7] }),
        ].map(pairs => pairs.map(([key]) => key));
        out.prevCloseFromApi = valuesOf({ prices: { 'NSE_EQ:1': 3.5 },
                                          prev_close: { 'NSE_EQ:1': 3 } })[0][1].prev_close;
        const delays = [];
        for (const attempt of [0, 1, 5, 30]) {
          delays.push([backoffDelay(attempt, 500, 15000, () => 0),
                       backoffDelay(attempt, 500, 15000, () => 0.999999)]);
        }
        out.delays = delays.map(([low, high]) => [Math.round(low), Math.round(high)]);
        return out;
      }"""
    )
    assert result["first"] == 0
    assert result["older"] is None and result["same"] is None
    assert result["up"] == [101.5, 1, 1.5, "AA"]
    assert result["unversioned"] == -1
    assert result["bad"] == [None, None, None, None]
    assert result["prevClose"] == [10, 10, True]
    assert result["unpriced"] == ["NSE_EQ:3"]
    assert result["newest"] == 1005
    assert result["shapes"] == [["NSE_EQ:1"], ["NSE_EQ:1"], ["NSE_EQ:7"], ["IDX_I:13"]]
    assert result["prevCloseFromApi"] == 3
    # Equal jitter: half the ceiling at least, never above it, the ceiling capped at 15 s.
    assert result["delays"] == [[250, 500], [500, 1000], [7500, 15000], [7500, 15000]]
