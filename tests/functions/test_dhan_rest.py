"""The DhanHQ REST fallback: pure planning/parsing, and the real `dhanhq` SDK against the
simulator's REST stand-in (successes and its failure answers), through the API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from core.config import Secret
from core.instruments import SEGMENT_CODES, InstrumentKey
from core.names import DHAN_REST_RATELIMIT_KEY
from functions.dhan_rest import (
    AUTH_ERROR,
    DHAN_ERROR,
    NOT_FOUND,
    NOT_SUBSCRIBED,
    RATE_LIMITED,
    TIMEOUT,
    UNKNOWN_INSTRUMENT,
    classify_failure,
    not_found_key,
    parse_ltp_answer,
    plan_calls,
    screen_misses,
    securities_of,
    store_prices,
)
from functions.ratelimit import RateLimiter
from functions.settings import Settings
from local.dhan_sim.rest import RestStandIn
from tests.functions import test_api_support as support
from tests.functions.test_api_support import ApiHarness, MakeApi

make_api = support.make_api


@pytest.fixture(params=["mangum", "router"])
def api_via(request: pytest.FixtureRequest) -> str:
    """Every test here runs through Mangum + FastAPI and through the Lambda router."""
    return str(request.param)


pytestmark = pytest.mark.usefixtures("api_via")

CLIENT_ID = "1000000001"
TOKEN = "sim-token"


# --- pure: planning and parsing ----------------------------------------------------------------

keys_strategy = st.lists(
    st.builds(InstrumentKey, st.sampled_from(sorted(SEGMENT_CODES)),
              st.integers(0, 10**6).map(str)),  # fmt: skip
    unique=True,
    max_size=2600,
)


@given(keys=keys_strategy, max_ids=st.integers(1, 1000))
def test_plan_covers_every_key_once_within_the_cap(keys: list[InstrumentKey], max_ids: int) -> None:
    calls = plan_calls(keys, max_ids=max_ids)
    flat = [key for call in calls for key in call]
    assert sorted(flat) == sorted(keys)
    assert all(0 < len(call) <= max_ids for call in calls)
    # As few calls as the cap allows: each rate-limit slot is precious.
    assert len(calls) == -(-len(keys) // max_ids)
    # Keys of one segment stay together (grouped by segment).
    order = [key.segment for key in flat]
    seen: list[str] = []
    for segment in order:
        if not seen or seen[-1] != segment:
            assert segment not in seen
            seen.append(segment)


def test_securities_body_uses_integer_ids_per_segment() -> None:
    call = [InstrumentKey("NSE_EQ", "1333"), InstrumentKey("NSE_FNO", "49081"),
            InstrumentKey("NSE_EQ", "11536")]  # fmt: skip
    assert securities_of(call) == {"NSE_EQ": [1333, 11536], "NSE_FNO": [49081]}


def test_parse_success_in_the_sdk_wrapping() -> None:
    call = [InstrumentKey("NSE_EQ", "1"), InstrumentKey("NSE_EQ", "2"), InstrumentKey("IDX_I", "3")]
    quotes = {"NSE_EQ": {"1": {"last_price": 12.5}, "2": {"last_price": "oops"}}}
    answer = {"status": "success", "remarks": "", "data": {"status": "success", "data": quotes}}
    prices, missing, error = parse_ltp_answer(call, answer)
    assert prices == {"NSE_EQ:1": 12.5}
    assert missing == {"NSE_EQ:2": NOT_FOUND, "IDX_I:3": NOT_FOUND}
    assert error is None


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"status": "success"},
        {"status": "success", "data": []},
        {"status": "success", "data": {"data": {"NSE_EQ": 5}}},
        {"status": "failure"},
        {"status": "failure", "remarks": 7},
    ],
)
def test_parse_never_raises_on_odd_answers(answer: dict[str, Any]) -> None:
    prices, missing, _ = parse_ltp_answer([InstrumentKey("NSE_EQ", "1")], answer)
    assert prices == {}
    assert set(missing) == {"NSE_EQ:1"}


@pytest.mark.parametrize(
    ("remarks", "reason"),
    [
        ({"error_code": "DH-904", "error_type": "Rate_Limit", "error_message": "x"}, RATE_LIMITED),
        ({"error_code": "805", "error_type": None, "error_message": "Too many"}, RATE_LIMITED),
        ({"error_code": "DH-901", "error_type": "Invalid_Authentication", "error_message": "x"},
         AUTH_ERROR),  # fmt: skip
        ({"error_code": "807", "error_type": None, "error_message": "expired"}, AUTH_ERROR),
        ({"error_code": "806", "error_type": "Data_Error", "error_message": "x"}, NOT_SUBSCRIBED),
        ({"error_code": "DH-905", "error_type": "Input_Exception", "error_message": "x"},
         DHAN_ERROR),  # fmt: skip
        ("HTTPConnectionPool(host='x', port=1): Read timed out. (read timeout=0.3)", TIMEOUT),
        ("Expecting value: line 1 column 1 (char 0)", DHAN_ERROR),
    ],
)
def test_failures_are_classified(remarks: Any, reason: str) -> None:
    got, entry = classify_failure(remarks)
    assert got == reason
    assert entry["reason"] == reason


def test_the_screen_answers_unknown_and_remembered_keys_without_a_call() -> None:
    keys = ["NSE_EQ:1", "NSE_EQ:2", "NSE_EQ:3", "NSE_EQ:4"]
    symbols = [b"A", None, b"C", None]
    remembered = [None, None, b"1", b"1"]
    loaded = screen_misses(keys, master_loaded=True, symbols=symbols, remembered=remembered)
    assert loaded.fetch == ["NSE_EQ:1"]
    assert loaded.missing == {"NSE_EQ:2": UNKNOWN_INSTRUMENT, "NSE_EQ:3": NOT_FOUND,
                              "NSE_EQ:4": UNKNOWN_INSTRUMENT}  # fmt: skip
    assert (loaded.unknown, loaded.remembered) == (2, 1)
    # Without a master no key is unknown: only the remembered ones skip the call.
    bare = screen_misses(keys, master_loaded=False, symbols=[None] * 4, remembered=remembered)
    assert bare.fetch == ["NSE_EQ:1", "NSE_EQ:2"]
    assert bare.missing == {"NSE_EQ:3": NOT_FOUND, "NSE_EQ:4": NOT_FOUND}
    # A segment the master does not list is fetched: it was not loaded, it is not unknown.
    mixed = screen_misses(["NSE_EQ:2", "MCX_COMM:114"], master_loaded=True,
                          symbols=[None, None], remembered=[None, None],
                          segments=frozenset({"NSE_EQ", "IDX_I"}))
    assert mixed.fetch == ["MCX_COMM:114"] and mixed.missing == {"NSE_EQ:2": UNKNOWN_INSTRUMENT}


# --- the limiter -------------------------------------------------------------------------------


def test_limiter_is_shared_by_every_instance(redis_client: redis.Redis) -> None:
    first = RateLimiter(redis=redis_client, interval=30.0)
    second = RateLimiter(redis=redis_client, interval=30.0)
    assert first.try_acquire() == 0.0
    wait = second.try_acquire()
    assert 0.0 < wait <= 30.0
    assert first.try_acquire() > 0.0
    ttl = redis_client.pttl(DHAN_REST_RATELIMIT_KEY)
    assert 0 < ttl <= 30_000


def test_limiter_gives_up_when_the_wait_passes_the_deadline(redis_client: redis.Redis) -> None:
    clock = [100.0]
    slept: list[float] = []
    limiter = RateLimiter(redis=redis_client, interval=30.0, clock=lambda: clock[0],
                          sleep=slept.append)  # fmt: skip
    assert limiter.acquire(deadline=100.0)
    assert not limiter.acquire(deadline=101.0)
    assert slept == []


def test_limiter_waits_for_the_slot_within_the_deadline(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis=redis_client, interval=0.05)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    waiting = RateLimiter(redis=redis_client, interval=0.05, sleep=sleep)
    assert limiter.acquire(deadline=float("inf"))
    assert waiting.acquire(deadline=float("inf"))
    assert slept and all(0 < s <= 0.05 for s in slept)


def test_limiter_repairs_a_slot_key_without_expiry(redis_client: redis.Redis) -> None:
    redis_client.set(DHAN_REST_RATELIMIT_KEY, "stuck")
    limiter = RateLimiter(redis=redis_client, interval=0.5)
    assert limiter.try_acquire() > 0.0
    assert 0 < redis_client.pttl(DHAN_REST_RATELIMIT_KEY) <= 500


# --- caching -----------------------------------------------------------------------------------


def test_store_never_overwrites_the_streams_price(redis_client: redis.Redis) -> None:
    redis_client.set("ltp:NSE_EQ:1333", "1500.25", ex=30)
    store_prices(redis=redis_client, prices={"NSE_EQ:1333": 1.0, "NSE_EQ:2885": 2450.1})
    assert redis_client.get("ltp:NSE_EQ:1333") == b"1500.25"
    assert redis_client.get("ltp:NSE_EQ:2885") == b"2450.1"
    assert 0 < redis_client.ttl("ltp:NSE_EQ:2885") <= 30


def test_store_remembers_not_found_keys_outside_the_price_namespace(
    redis_client: redis.Redis,
) -> None:
    store_prices(redis=redis_client, prices={}, not_found=["NSE_EQ:99"], not_found_ttl=120)
    assert not_found_key("NSE_EQ:99") == "dhan:rest:not_found:NSE_EQ:99"
    assert redis_client.get("dhan:rest:not_found:NSE_EQ:99") == b"1"
    assert 110 < redis_client.ttl("dhan:rest:not_found:NSE_EQ:99") <= 120
    assert list(redis_client.scan_iter(match="ltp:*")) == []  # a price scan finds no debris
    store_prices(redis=redis_client, prices={}, not_found=["NSE_EQ:98"], not_found_ttl=0)
    assert redis_client.exists("dhan:rest:not_found:NSE_EQ:98") == 0


def test_the_new_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env({"DHAN_NOT_FOUND_TTL_SECONDS": "60",
                                  "DHAN_REST_CALLER_INTERVAL_SECONDS": "2.5"})  # fmt: skip
    assert (settings.dhan_not_found_ttl, settings.dhan_rest_caller_interval) == (60, 2.5)
    defaults = Settings.from_env({})
    assert (defaults.dhan_not_found_ttl, defaults.dhan_rest_caller_interval) == (300, 5.0)


# --- through the SDK, against the stand-in -----------------------------------------------------


@pytest.fixture
def rest() -> Iterator[RestStandIn]:
    with RestStandIn(client_id=CLIENT_ID, access_token=TOKEN, rate_limit_interval=0.02) as stand_in:
        yield stand_in


def dhan_api(make_api: MakeApi, rest: RestStandIn, **overrides: Any) -> ApiHarness:
    settings: dict[str, Any] = {
        "dhan_client_id": CLIENT_ID,
        "dhan_access_token": Secret(TOKEN),
        "dhan_api_base_url": rest.base_url,
        # Spacing far above the stand-in's own limit: arrival jitter on a loaded machine can
        # bring two calls closer at the server than they left here.
        "dhan_rest_min_interval": 0.12,
        "dhan_rest_timeout": 2.0,
        "dhan_rest_budget": 5.0,
        # One test caller asks many times in a row; the caller's share has tests of its own
        # (test_ratelimit.py, tests/abuse).
        "dhan_rest_caller_interval": 0.0,
    }
    settings.update(overrides)
    return make_api(**settings)


def test_misses_are_fetched_through_the_sdk_and_cached(
    make_api: MakeApi, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    api = dhan_api(make_api, rest)
    rest.set_price("NSE_EQ", "11536", 3901.05)
    rest.set_price("IDX_I", "13", 24500.4)
    redis_client.set("ltp:NSE_EQ:1333", "1234.5")

    body = api.get_prices("keys=NSE_EQ:1333,NSE_EQ:11536,IDX_I:13").json()

    assert body["prices"] == {"NSE_EQ:1333": 1234.5, "NSE_EQ:11536": 3901.05, "IDX_I:13": 24500.4}
    assert (body["cached_count"], body["api_fetched_count"], body["count"]) == (1, 2, 3)
    assert body["missing"] == {}
    assert len(rest.calls) == 1
    call = rest.calls[0]
    assert call["path"] == "/v2/marketfeed/ltp"
    assert call["body"]["NSE_EQ"] == [11536]
    assert call["body"]["IDX_I"] == [13]
    assert call["headers"]["access-token"] == TOKEN
    assert call["headers"]["client-id"] == CLIENT_ID
    assert redis_client.get("ltp:NSE_EQ:11536") == b"3901.05"
    assert 0 < redis_client.ttl("ltp:IDX_I:13") <= 30

    again = api.get_prices("keys=NSE_EQ:11536,IDX_I:13").json()
    assert again["cached_count"] == 2
    assert len(rest.calls) == 1


def test_ids_dhan_does_not_know_are_not_found(
    make_api: MakeApi, rest: RestStandIn
) -> None:
    api = dhan_api(make_api, rest)
    rest.unknown_ids_missing = True
    rest.set_price("NSE_EQ", "1333", 1234.5)
    body = api.post_prices({"keys": ["NSE_EQ:1333", "NSE_EQ:99999"]}).json()
    assert body["prices"] == {"NSE_EQ:1333": 1234.5}
    assert body["missing"] == {"NSE_EQ:99999": "not_found"}
    assert body["errors"] == []


def test_not_found_is_remembered_until_a_price_appears(
    make_api: MakeApi, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    api = dhan_api(make_api, rest, dhan_not_found_ttl=240)
    rest.unknown_ids_missing = True
    first = api.get_prices("keys=NSE_EQ:99999").json()
    assert first["missing"] == {"NSE_EQ:99999": "not_found"}
    assert len(rest.calls) == 1
    assert 230 < redis_client.ttl("dhan:rest:not_found:NSE_EQ:99999") <= 240

    # Asked again (and again): answered from the cache, no call, no credentials needed.
    for _ in range(3):
        again = api.get_prices("keys=NSE_EQ:99999").json()
        assert again["missing"] == {"NSE_EQ:99999": "not_found"}
        assert again["api_fetched_count"] == 0
    assert len(rest.calls) == 1

    # The stream starts carrying it: its price wins over the remembered absence.
    redis_client.set("ltp:NSE_EQ:99999", "12.5", ex=30)
    body = api.get_prices("keys=NSE_EQ:99999").json()
    assert body["prices"] == {"NSE_EQ:99999": 12.5} and body["missing"] == {}
    assert len(rest.calls) == 1


def test_without_a_not_found_ttl_every_miss_asks_dhan(
    make_api: MakeApi, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    api = dhan_api(make_api, rest, dhan_not_found_ttl=0)
    rest.unknown_ids_missing = True
    for _ in range(2):
        assert api.get_prices("keys=NSE_EQ:99999").json()["missing"] == {
            "NSE_EQ:99999": "not_found"}
    assert len(rest.calls) == 2
    assert list(redis_client.scan_iter(match="dhan:rest:not_found:*")) == []


def test_with_a_master_loaded_unknown_instruments_cost_no_call(
    make_api: MakeApi, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    from core.instrument_master import SAMPLE_PATH, load_master

    api = dhan_api(make_api, rest)
    rest.set_price("NSE_EQ", "2885", 2450.1)
    rest.set_price("NSE_EQ", "424242", 1.5)  # Dhan would know it; the master does not
    # No master yet: fetched as before.
    body = api.get_prices("keys=NSE_EQ:424242").json()
    assert body["prices"] == {"NSE_EQ:424242": 1.5}
    assert len(rest.calls) == 1
    redis_client.delete("ltp:NSE_EQ:424242")

    load_master(SAMPLE_PATH, redis=redis_client)
    body = api.get_prices("keys=NSE_EQ:2885,NSE_EQ:424242,IDX_I:7").json()
    assert body["prices"] == {"NSE_EQ:2885": 2450.1}
    assert body["missing"] == {"NSE_EQ:424242": "unknown_instrument",
                               "IDX_I:7": "unknown_instrument"}  # fmt: skip
    assert len(rest.calls) == 2
    assert rest.calls[1]["body"] == {"NSE_EQ": [2885], "dhanClientId": CLIENT_ID}
    # Only unknown keys: no call at all.
    body = api.get_prices("keys=NSE_EQ:424242").json()
    assert body["missing"] == {"NSE_EQ:424242": "unknown_instrument"}
    assert len(rest.calls) == 2


def test_unknown_instruments_are_answered_even_without_credentials(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    from core.instrument_master import SAMPLE_PATH, load_master

    load_master(SAMPLE_PATH, redis=redis_client)
    body = make_api().get_prices("keys=NSE_EQ:2885,NSE_EQ:424242").json()
    assert body["missing"] == {"NSE_EQ:2885": "dhan_not_configured",
                               "NSE_EQ:424242": "unknown_instrument"}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "code", "kind", "reason"),
    [
        (429, "DH-904", "Rate_Limit", "rate_limited"),
        (400, "806", "Data_Error", "dhan_not_subscribed"),
        (401, "DH-901", "Invalid_Authentication", "dhan_auth_error"),
        (500, "DH-908", "Internal_Server_Error", "dhan_error"),
    ],
)
def test_dhan_failures_are_reported_in_the_body_never_a_500(
    make_api: MakeApi, rest: RestStandIn, status: int, code: str, kind: str, reason: str
) -> None:
    api = dhan_api(make_api, rest)
    # A rate-limit answer is retried once on the next slot, so it must come twice to stick.
    rest.fail_next(n=2 if reason == "rate_limited" else 1, http_status=status, error_code=code,
                   error_type=kind, message=f"{kind} happened")  # fmt: skip
    answer = api.get_prices("keys=NSE_EQ:1333,NSE_FNO:49081")
    assert answer.status == 200
    body = answer.json()
    assert body["prices"] == {}
    assert body["missing"] == {"NSE_EQ:1333": reason, "NSE_FNO:49081": reason}
    [error] = body["errors"]
    assert error == {"reason": reason, "code": code, "type": kind, "message": f"{kind} happened",
                     "keys": 2, "segments": ["NSE_EQ", "NSE_FNO"]}  # fmt: skip


def test_one_rate_limit_answer_is_retried_on_the_next_slot(
    make_api: MakeApi, rest: RestStandIn
) -> None:
    api = dhan_api(make_api, rest)
    rest.set_price("NSE_EQ", "1333", 1234.5)
    rest.fail_next(n=1)
    body = api.get_prices("keys=NSE_EQ:1333").json()
    assert body["prices"] == {"NSE_EQ:1333": 1234.5}
    assert body["missing"] == {}
    assert body["errors"] == []
    assert [call["status"] for call in rest.calls] == [429, 200]
    assert rest.calls[1]["t"] - rest.calls[0]["t"] >= 0.1  # waited for the limiter's next slot


def test_wrong_token_is_an_auth_error_in_the_body(make_api: MakeApi, rest: RestStandIn) -> None:
    api = dhan_api(make_api, rest, dhan_access_token=Secret("expired-token"))
    body = api.get_prices("keys=NSE_EQ:1333").json()
    assert body["missing"] == {"NSE_EQ:1333": "dhan_auth_error"}
    assert body["errors"][0]["code"] == "DH-901"


def test_a_slow_dhan_becomes_timeout_not_a_hang(make_api: MakeApi, rest: RestStandIn) -> None:
    api = dhan_api(make_api, rest, dhan_rest_timeout=0.3, dhan_rest_budget=1.0)
    rest.delay = 5.0
    answer = api.get_prices("keys=NSE_EQ:1333")
    assert answer.status == 200
    assert answer.json()["missing"] == {"NSE_EQ:1333": "timeout"}
    assert answer.json()["errors"][0]["reason"] == "timeout"


def test_a_taken_rate_limit_slot_lists_keys_as_rate_limited_without_calling(
    make_api: MakeApi, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    api = dhan_api(make_api, rest, dhan_rest_budget=0.5)
    # Another Lambda holds the deployment's slot for longer than this request's budget.
    redis_client.set(DHAN_REST_RATELIMIT_KEY, "other-lambda", px=60_000)
    body = api.get_prices("keys=NSE_EQ:1333,BSE_EQ:500325").json()
    assert body["missing"] == {"NSE_EQ:1333": "rate_limited", "BSE_EQ:500325": "rate_limited"}
    assert rest.calls == []


def test_thousands_of_misses_go_in_calls_of_at_most_1000_spaced_by_the_limiter(
    make_api: MakeApi, rest: RestStandIn
) -> None:
    # A budget no loaded machine can exhaust: only the limiter's spacing is under test here.
    api = dhan_api(make_api, rest, dhan_rest_budget=60.0, dhan_rest_timeout=20.0)
    keys = [f"NSE_EQ:{i}" for i in range(1, 1301)] + [f"NSE_FNO:{i}" for i in range(1, 1201)]
    body = api.post_prices({"keys": keys}).json()
    assert body["api_fetched_count"] == 2500
    assert body["missing"] == {}
    assert body["errors"] == []
    # Arrival jitter on a loaded machine may make the stand-in's own window reject a call that
    # the limiter spaced correctly; that call is retried, so count what was answered.
    sizes = [sum(len(v) for k, v in call["body"].items() if k != "dhanClientId")
             for call in rest.calls if call["status"] == 200]  # fmt: skip
    assert sizes == [1000, 1000, 500]


def test_budget_exhausted_by_the_limiter_lists_the_rest_as_rate_limited(
    make_api: MakeApi, rest: RestStandIn
) -> None:
    api = dhan_api(make_api, rest, dhan_rest_min_interval=5.0, dhan_rest_budget=0.5)
    keys = [f"NSE_EQ:{i}" for i in range(1, 1501)]
    body = api.post_prices({"keys": keys}).json()
    assert body["api_fetched_count"] == 1000
    reasons = set(body["missing"].values())
    assert reasons == {"rate_limited"}
    assert len(body["missing"]) == 500
    assert len(rest.calls) == 1
