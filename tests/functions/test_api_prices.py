"""GET/POST /api/v1/current_prices through Mangum with HTTP API v2 events and a real Redis."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import redis

from functions.api.keys import MAX_BODY_BYTES, MAX_POST_KEYS, MAX_QUERY_BYTES
from functions.api.router import caller_of
from tests.functions import test_api_support as support
from tests.functions.test_api_support import (
    ApiHarness,
    MakeApi,
    load_event,
    with_headers,
    with_query,
)

make_api = support.make_api


@pytest.fixture(params=["mangum", "router"])
def api_via(request: pytest.FixtureRequest) -> str:
    """Every test here runs through Mangum + FastAPI and through the Lambda router."""
    return str(request.param)


pytestmark = pytest.mark.usefixtures("api_via")
api = support.api

SEED_FIELDS = {"prices", "timestamp", "count", "cached_count", "api_fetched_count"}


def test_get_fixture_event_reads_cached_prices(api: ApiHarness, redis_client: redis.Redis) -> None:
    redis_client.set("ltp:NSE_EQ:1333", "1234.5", ex=30)
    redis_client.set("ltp:NSE_EQ:11536", "3901.05", ex=30)

    answer = api.invoke(load_event("http_get_current_prices"))

    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert SEED_FIELDS <= body.keys()
    assert body["prices"] == {"NSE_EQ:1333": 1234.5, "NSE_EQ:11536": 3901.05}
    assert body["count"] == 2
    assert body["cached_count"] == 2
    assert body["api_fetched_count"] == 0
    assert body["missing"] == {}
    assert body["errors"] == []
    assert body["timestamp"].endswith("Z")


def test_post_fixture_events_plain_and_base64(api: ApiHarness, redis_client: redis.Redis) -> None:
    redis_client.set("ltp:NSE_EQ:1333", "1234.5")
    redis_client.set("ltp:NSE_EQ:11536", "3901.05")
    for name in ("http_post_current_prices", "http_post_current_prices_base64"):
        answer = api.invoke(load_event(name))
        assert answer.status == 200, answer.body
        assert answer.json()["prices"] == {"NSE_EQ:1333": 1234.5, "NSE_EQ:11536": 3901.05}


def test_duplicates_and_non_canonical_forms_are_folded(
    api: ApiHarness, redis_client: redis.Redis
) -> None:
    redis_client.set("ltp:NSE_EQ:1333", "10")
    answer = api.post_prices({"keys": ["NSE_EQ:1333", " NSE_EQ:01333", "NSE_EQ:1333"]})
    assert answer.status == 200
    body = answer.json()
    assert body["prices"] == {"NSE_EQ:1333": 10.0}
    assert body["requested_count"] == 1

    answer = api.get_prices("keys=NSE_EQ:1333,NSE_EQ:1333&keys=NSE_EQ:001333")
    assert answer.json()["requested_count"] == 1


def test_misses_without_dhan_credentials_are_listed_as_missing(
    api: ApiHarness, redis_client: redis.Redis
) -> None:
    redis_client.set("ltp:NSE_EQ:1333", "10")
    redis_client.set("ltp:NSE_EQ:2885", "not-a-price")  # garbage in the cache is a miss
    body = api.get_prices("keys=NSE_EQ:1333,NSE_EQ:2885,BSE_EQ:500325").json()
    assert body["prices"] == {"NSE_EQ:1333": 10.0}
    assert body["missing"] == {
        "NSE_EQ:2885": "dhan_not_configured",
        "BSE_EQ:500325": "dhan_not_configured",
    }


def test_every_bad_key_is_named_in_a_422(api: ApiHarness) -> None:
    answer = api.get_prices("keys=NSE_EQ:1333,FOO:1,NSE_EQ:12a,NSE_EQ")
    assert answer.status == 422
    body = answer.json()
    assert body["error"] == "invalid_keys"
    assert set(body["invalid_keys"]) == {"FOO:1", "NSE_EQ:12a", "NSE_EQ"}
    for bad in ("FOO:1", "NSE_EQ:12a", "NSE_EQ"):
        assert bad in body["message"]

    answer = api.post_prices({"keys": ["NSE_EQ:1333", 42, "MCX_COMM:99999999999"]})
    assert answer.status == 422
    assert set(answer.json()["invalid_keys"]) == {"42", "MCX_COMM:99999999999"}


def test_no_keys_is_a_422_with_an_example(api: ApiHarness) -> None:
    for query in ("", "keys=", "keys=,,"):
        answer = api.get_prices(query)
        assert answer.status == 422, query
        assert "NSE_EQ:1333" in answer.json()["message"]
    assert api.post_prices({"keys": []}).status == 422
    assert api.post_prices({"names": ["NSE_EQ:1"]}).status == 422


def test_query_beyond_the_documented_limit_is_414(api: ApiHarness) -> None:
    keys = ",".join(f"NSE_EQ:{100000 + i}" for i in range(700))
    assert len(f"keys={keys}") > MAX_QUERY_BYTES
    answer = api.get_prices(f"keys={keys}")
    assert answer.status == 414
    body = answer.json()
    assert str(MAX_QUERY_BYTES) in body["message"]
    assert body["limit_bytes"] == MAX_QUERY_BYTES


def test_more_than_5000_keys_is_413_with_the_limit(api: ApiHarness) -> None:
    keys = [f"NSE_EQ:{i}" for i in range(MAX_POST_KEYS + 1)]
    answer = api.post_prices({"keys": keys})
    assert answer.status == 413
    assert str(MAX_POST_KEYS) in answer.json()["message"]
    assert answer.json()["limit_keys"] == MAX_POST_KEYS


def test_exactly_5000_keys_are_served(api: ApiHarness, redis_client: redis.Redis) -> None:
    keys = [f"NSE_FNO:{40000 + i}" for i in range(MAX_POST_KEYS)]
    redis_client.mset({f"ltp:{k}": "1.5" for k in keys})
    body = api.post_prices({"keys": keys}).json()
    assert body["count"] == MAX_POST_KEYS
    assert body["cached_count"] == MAX_POST_KEYS


def test_oversized_body_is_413(api: ApiHarness) -> None:
    padding = " " * (MAX_BODY_BYTES + 1)
    answer = api.post_prices('{"keys": ["NSE_EQ:1"]}' + padding)
    assert answer.status == 413
    assert str(MAX_BODY_BYTES) in answer.json()["message"]


def test_malformed_bodies_are_400(api: ApiHarness) -> None:
    assert api.post_prices("{not json").status == 400
    assert api.post_prices('["NSE_EQ:1"]').status == 400
    assert api.post_prices("").status == 400
    answer = api.post_prices(b"\xff\xfe\x00garbage")
    assert answer.status == 400
    assert "JSON" in answer.json()["message"]


def test_redis_down_is_503_with_retry_after(make_api: MakeApi) -> None:
    from local.redis_server import free_port

    down = make_api()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    from dataclasses import replace

    from functions.api.deps import connect_redis

    client = connect_redis(replace(down.deps.settings, redis_url=dead, redis_connect_timeout=0.2))
    try:
        harness = make_api(deps_overrides={"redis": client})
        for answer in (harness.get_prices("keys=NSE_EQ:1333"), harness.health(),
                       harness.start({"name": "a", "keys": ["NSE_EQ:1"]})):  # fmt: skip
            assert answer.status == 503
            assert answer.headers["retry-after"] == "5"
            assert answer.json()["error"] == "redis_unavailable"
    finally:
        client.close()


def test_unknown_route_and_method_get_json_errors(api: ApiHarness) -> None:
    event = load_event("http_get_health")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/nope"
    assert api.invoke(event).status == 404
    event = load_event("http_get_current_prices")
    event["requestContext"]["http"]["method"] = "DELETE"
    answer = api.invoke(event)
    assert answer.status == 405
    assert answer.json()["error"] == "http_error"


def test_declared_content_length_over_the_limit_is_refused_early(api: ApiHarness) -> None:
    event = with_headers(load_event("http_post_current_prices"),
                         content_length=str(MAX_BODY_BYTES + 10))  # fmt: skip
    answer = api.invoke(event)
    assert answer.status == 413


def test_router_and_mangum_answer_alike(make_api: MakeApi, redis_client: redis.Redis) -> None:
    from tests.functions.test_api_support import ApiHarness as Harness
    from tests.functions.test_api_support import with_body, with_query

    redis_client.set("ltp:NSE_EQ:1333", "1234.5")
    base = make_api()
    mangum = Harness(base.deps, via="mangum")
    router = Harness(base.deps, via="router")
    get, post = load_event("http_get_current_prices"), load_event("http_post_current_prices")
    events = [
        get, post, load_event("http_post_current_prices_base64"),
        with_query(get, "keys=NSE_EQ:1333,BAD"), with_query(get, ""),
        with_query(get, "keys=" + "NSE_EQ:1," * 2000), with_body(post, "{"),
        with_body(post, {"keys": ["NSE_EQ:1"] * (MAX_POST_KEYS + 1)}),
        with_headers(post, content_length=str(MAX_BODY_BYTES + 1)),
    ]
    try:
        for event in events:
            a, b = mangum.invoke(event), router.invoke(event)
            assert (a.status, a.headers) == (b.status, b.headers)
            first, second = a.json(), b.json()
            first.pop("timestamp", None)
            second.pop("timestamp", None)
            assert first == second
    finally:
        mangum.close()
        router.close()


def test_cached_text_of_every_shape(api: ApiHarness, redis_client: redis.Redis) -> None:
    """JSON numbers are passed through as stored, other numbers converted, the rest missing."""
    stored = {
        "NSE_EQ:1": "1234.5", "NSE_EQ:2": "0.05", "NSE_EQ:3": "10", "NSE_EQ:4": "1e+16",
        "NSE_EQ:5": "-5.25", "NSE_EQ:6": " 12.5", "NSE_EQ:7": "01.5", "NSE_EQ:8": "7.",
        "NSE_EQ:9": "nan", "NSE_EQ:10": "inf", "NSE_EQ:11": "1e400", "NSE_EQ:12": "true",
        "NSE_EQ:13": '"1.5"', "NSE_EQ:14": "[1]", "NSE_EQ:15": "", "NSE_EQ:16": "1.5,2.5",
    }  # fmt: skip
    redis_client.mset({f"ltp:{key}": value for key, value in stored.items()})
    answer = api.post_prices({"keys": list(stored)})
    assert answer.status == 200
    body = answer.json()
    assert body["prices"] == {
        "NSE_EQ:1": 1234.5, "NSE_EQ:2": 0.05, "NSE_EQ:3": 10.0, "NSE_EQ:4": 1e16,
        "NSE_EQ:5": -5.25, "NSE_EQ:6": 12.5, "NSE_EQ:7": 1.5, "NSE_EQ:8": 7.0,
    }  # fmt: skip
    assert set(body["missing"]) == set(stored) - set(body["prices"])
    assert body["cached_count"] == body["count"] == 8
    assert b'"NSE_EQ:1":1234.5,' in answer.body  # the stored text itself


def test_all_cached_answer_is_the_stored_text_in_request_order(
    api: ApiHarness, redis_client: redis.Redis
) -> None:
    keys = [f"NSE_FNO:{40000 + i}" for i in range(300)]
    redis_client.mset({f"ltp:{key}": f"{i}.{i % 100:02d}" for i, key in enumerate(keys)})
    answer = api.post_prices({"keys": [*keys, *keys[:10]]})
    body = answer.json()
    assert list(body["prices"]) == keys
    assert body["prices"] == {key: float(f"{i}.{i % 100:02d}") for i, key in enumerate(keys)}
    assert body["count"] == body["cached_count"] == body["requested_count"] == 300
    assert body["missing"] == {} and body["errors"] == []


# --- who is asking: the REST share's caller ----------------------------------------------------


def _from(event: dict[str, Any], ip: str | None, sub: str | None = None) -> dict[str, Any]:
    event = copy.deepcopy(event)
    if ip is None:
        event["requestContext"]["http"].pop("sourceIp", None)
    else:
        event["requestContext"]["http"]["sourceIp"] = ip
    if sub is not None:
        event["requestContext"]["authorizer"] = {"jwt": {"claims": {"sub": sub}, "scopes": None}}
    return event


def test_the_caller_is_the_jwt_subject_else_the_source_ip() -> None:
    get = load_event("http_get_current_prices")
    assert caller_of(get) == "ip:203.0.113.7"
    assert caller_of(_from(get, "203.0.113.7", sub="user-42")) == "sub:user-42"
    assert caller_of(_from(get, "203.0.113.7", sub="")) == "ip:203.0.113.7"
    # An IPv6 caller is its /64: one subscriber cannot be 2**64 callers.
    assert caller_of(_from(get, "2001:db8:1:2:aaaa::1")) == "ip:2001:db8:1:2::/64"
    assert caller_of(_from(get, "2001:db8:1:2:bbbb::9")) == "ip:2001:db8:1:2::/64"
    assert caller_of(_from(get, "2001:db8:1:3::1")) == "ip:2001:db8:1:3::/64"
    assert caller_of(_from(get, None)) is None
    assert caller_of({"version": "2.0", "requestContext": {"authorizer": "odd"}}) is None


def test_one_caller_gets_its_share_of_rest_slots_and_others_theirs(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    from core.config import Secret
    from local.dhan_sim.rest import RestStandIn

    with RestStandIn(client_id="1000000001", access_token="sim-token",
                     rate_limit_interval=0.02) as rest:  # fmt: skip
        base = make_api(dhan_client_id="1000000001", dhan_access_token=Secret("sim-token"),
                        dhan_api_base_url=rest.base_url, dhan_rest_min_interval=0.1,
                        dhan_rest_caller_interval=30.0)  # fmt: skip
        router = ApiHarness(base.deps, via="router")
        get = load_event("http_get_current_prices")
        try:
            for security_id in range(1, 5):
                rest.set_price("NSE_EQ", security_id, 100.0 + security_id)
            first = router.invoke(with_query(_from(get, "203.0.113.7"), "keys=NSE_EQ:1"))
            assert first.json()["prices"] == {"NSE_EQ:1": 101.0}

            # Over its share: answered at once, no call, a caller_share error that says so.
            began = time.monotonic()
            over = router.invoke(with_query(_from(get, "203.0.113.7"), "keys=NSE_EQ:2")).json()
            assert time.monotonic() - began < 0.5
            assert over["missing"] == {"NSE_EQ:2": "rate_limited"}
            assert [e["code"] for e in over["errors"]] == ["caller_share"]
            # The JWT subject is the caller when there is one, whatever the address.
            user = router.invoke(with_query(_from(get, "198.51.100.1", sub="u1"), "keys=NSE_EQ:3"))
            assert set(user.json()["prices"]) == {"NSE_EQ:3"}
            moved = router.invoke(with_query(_from(get, "198.51.100.2", sub="u1"),
                                             "keys=NSE_EQ:4")).json()  # fmt: skip
            assert moved["missing"] == {"NSE_EQ:4": "rate_limited"}
            # Another address is another caller, with its own share.
            other = router.invoke(with_query(_from(get, "198.51.100.3"), "keys=NSE_EQ:2")).json()
            assert set(other["prices"]) == {"NSE_EQ:2"}
            assert len(rest.calls) == 3
        finally:
            router.close()
