"""The REST stand-in, called through the real `dhanhq` SDK over loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from dhanhq import DhanContext
from dhanhq._market_feed import MarketFeed as RestMarketFeed

from local.dhan_sim.prices import PriceBook
from local.dhan_sim.rest import RestStandIn

CLIENT, TOKEN = "1000000001", "sim-token"


@pytest.fixture
def rest() -> Iterator[RestStandIn]:
    with RestStandIn(PriceBook(seed=7), client_id=CLIENT, access_token=TOKEN) as stand_in:
        yield stand_in


def sdk(base_url: str, *, client_id: str = CLIENT, token: str = TOKEN) -> Iterator[Any]:
    ctx = DhanContext(client_id, token)
    http = ctx.get_dhan_http()
    http.base_url = base_url
    try:
        yield RestMarketFeed(ctx)
    finally:
        http.session.close()


@pytest.fixture
def feed(rest: RestStandIn) -> Iterator[Any]:
    yield from sdk(rest.base_url)


def test_ltp_answers_pinned_prices_like_dhan(rest: RestStandIn, feed: Any) -> None:
    rest.set_price("NSE_EQ", "1333", 1234.5)
    rest.set_price("NSE_FNO", 49081, 101.05)

    result = feed.ticker_data({"NSE_EQ": [1333], "NSE_FNO": [49081]})

    assert result["status"] == "success"
    assert result["data"] == {
        "data": {"NSE_EQ": {"1333": {"last_price": 1234.5}},
                 "NSE_FNO": {"49081": {"last_price": 101.05}}},
        "status": "success",
    }  # fmt: skip


def test_the_call_is_recorded_with_body_and_headers(rest: RestStandIn, feed: Any) -> None:
    feed.ticker_data({"NSE_EQ": [11536]})

    [call] = rest.calls
    assert call["body"] == {"NSE_EQ": [11536], "dhanClientId": CLIENT}
    assert call["headers"]["access-token"] == TOKEN
    assert call["headers"]["client-id"] == CLIENT
    assert isinstance(call["t"], float)


def test_unknown_ids_get_a_stable_seeded_price(rest: RestStandIn, feed: Any) -> None:
    rest.enforce_rate_limit = False
    first = feed.ticker_data({"NSE_EQ": [11536]})["data"]["data"]["NSE_EQ"]["11536"]
    again = feed.ticker_data({"NSE_EQ": [11536]})["data"]["data"]["NSE_EQ"]["11536"]

    assert first == again
    expected = PriceBook(seed=7).initial_state(("NSE_EQ", "11536")).price
    assert first["last_price"] == expected
    assert round(first["last_price"] / 0.05) * 0.05 == pytest.approx(first["last_price"])


def test_unknown_ids_can_be_left_out(rest: RestStandIn, feed: Any) -> None:
    rest.unknown_ids_missing = True
    rest.set_price("NSE_EQ", "1333", 10.0)

    result = feed.ticker_data({"NSE_EQ": [1333, 999999], "BSE_EQ": [500325]})

    assert result["data"]["data"] == {"NSE_EQ": {"1333": {"last_price": 10.0}}}


@pytest.mark.parametrize(("client_id", "token"), [(CLIENT, "wrong"), ("1000000002", TOKEN)])
def test_bad_credentials_are_refused_with_dh_901(
    rest: RestStandIn, client_id: str, token: str
) -> None:
    for feed in sdk(rest.base_url, client_id=client_id, token=token):
        result = feed.ticker_data({"NSE_EQ": [1333]})
        assert result["status"] == "failure"
        assert result["remarks"]["error_code"] == "DH-901"
        assert result["remarks"]["error_type"] == "Invalid_Authentication"


def test_missing_headers_get_http_401(rest: RestStandIn) -> None:
    response = requests.post(rest.base_url + "/marketfeed/ltp", json={"NSE_EQ": [1]}, timeout=5)
    assert response.status_code == 401
    assert response.json()["errorCode"] == "DH-901"


def test_a_second_call_within_the_window_is_rate_limited(rest: RestStandIn, feed: Any) -> None:
    rest.rate_limit_interval = 60.0  # so the second call is inside the window on any machine

    assert feed.ticker_data({"NSE_EQ": [1333]})["status"] == "success"
    limited = feed.ticker_data({"NSE_EQ": [1333]})

    assert limited["status"] == "failure"
    assert limited["remarks"]["error_code"] == "DH-904"
    assert limited["remarks"]["error_type"] == "Rate_Limit"


def test_the_rate_limit_is_per_client_id(rest: RestStandIn, feed: Any) -> None:
    rest.rate_limit_interval = 60.0
    assert feed.ticker_data({"NSE_EQ": [1333]})["status"] == "success"
    rest.client_id = "1000000002"  # another account of the same stand-in
    for other in sdk(rest.base_url, client_id="1000000002"):
        assert other.ticker_data({"NSE_EQ": [1333]})["status"] == "success"


def test_more_than_1000_instruments_is_dh_905(rest: RestStandIn, feed: Any) -> None:
    result = feed.ticker_data({"NSE_EQ": list(range(600)), "NSE_FNO": list(range(401))})

    assert result["status"] == "failure"
    assert result["remarks"]["error_code"] == "DH-905"
    assert "1000" in result["remarks"]["error_message"]


def test_exactly_1000_instruments_are_answered(rest: RestStandIn, feed: Any) -> None:
    result = feed.ticker_data({"NSE_EQ": list(range(1, 501)), "NSE_FNO": list(range(1, 501))})

    data = result["data"]["data"]
    assert len(data["NSE_EQ"]) == len(data["NSE_FNO"]) == 500


@pytest.mark.parametrize(
    "body", [{"NSE_XX": [1]}, {"NSE_EQ": ["1333"]}, {"NSE_EQ": 1333}, {"NSE_EQ": [True]}]
)
def test_bad_bodies_are_dh_905(rest: RestStandIn, feed: Any, body: dict[str, Any]) -> None:
    rest.enforce_rate_limit = False
    result = feed.ticker_data(body)
    assert result["remarks"]["error_code"] == "DH-905"


def test_fail_next_answers_n_calls_with_the_given_error(rest: RestStandIn, feed: Any) -> None:
    rest.enforce_rate_limit = False
    rest.fail_next(n=2, http_status=500, error_code="DH-908", error_type="Internal_Server_Error",
                   message="boom")  # fmt: skip

    first, second, third = (feed.ticker_data({"NSE_EQ": [1333]}) for _ in range(3))

    for failed in (first, second):
        assert failed["status"] == "failure"
        assert failed["remarks"] == {"error_code": "DH-908",
                                     "error_type": "Internal_Server_Error",
                                     "error_message": "boom"}  # fmt: skip
    assert third["status"] == "success"


def test_fail_next_defaults_to_a_rate_limit_answer(rest: RestStandIn) -> None:
    rest.fail_next()
    response = requests.post(rest.base_url + "/marketfeed/ltp", json={"NSE_EQ": [1]}, timeout=5,
                             headers={"access-token": TOKEN, "client-id": CLIENT})  # fmt: skip
    assert response.status_code == 429
    assert response.json() == {"errorType": "Rate_Limit", "errorCode": "DH-904",
                               "errorMessage": "Too many requests"}  # fmt: skip


def test_delay_makes_the_sdk_time_out(rest: RestStandIn, feed: Any) -> None:
    rest.delay = 30.0  # closing the stand-in wakes the sleeping handler
    feed.dhan_http.timeout = 0.2

    result = feed.ticker_data({"NSE_EQ": [1333]})

    assert result["status"] == "failure"
    assert "timed out" in str(result["remarks"]).lower()


def test_ohlc_and_quote_share_the_prices(rest: RestStandIn, feed: Any) -> None:
    rest.enforce_rate_limit = False
    rest.set_price("NSE_EQ", "1333", 1500.0)

    ohlc = feed.ohlc_data({"NSE_EQ": [1333]})["data"]["data"]["NSE_EQ"]["1333"]
    quote = feed.quote_data({"NSE_EQ": [1333]})["data"]["data"]["NSE_EQ"]["1333"]

    assert ohlc["last_price"] == quote["last_price"] == 1500.0
    assert set(ohlc["ohlc"]) == {"open", "close", "high", "low"}
    assert len(quote["depth"]["buy"]) == len(quote["depth"]["sell"]) == 5


def test_prices_follow_a_shared_book() -> None:
    book = PriceBook(seed=1)
    book.set_price(("NSE_EQ", "1333"), 42.0)
    with RestStandIn(book, enforce_rate_limit=False) as rest:
        for feed in sdk(rest.base_url):
            book.set_price(("NSE_EQ", "1333"), 43.5)
            answer = feed.ticker_data({"NSE_EQ": [1333]})
            assert answer["data"]["data"]["NSE_EQ"]["1333"]["last_price"] == 43.5


def test_unknown_path_is_404(rest: RestStandIn) -> None:
    response = requests.post(rest.base_url + "/orders", json={}, timeout=5,
                             headers={"access-token": TOKEN, "client-id": CLIENT})  # fmt: skip
    assert response.status_code == 404
