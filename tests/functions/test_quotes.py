"""The quotes function (`functions.quotes.handler`) run as Lambda runs it (`local.lambda_host`,
invoked through boto3's `lambda` client) against a real Redis and the DhanHQ REST stand-in,
and the API's remote path to it (`functions.api.quotes.RemoteQuotes`): the same answers as the
in-process fetch, batches of at most 1,000 keys, and a failed invoke answered `dhan_error`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import orjson
import pytest
import redis
from moto import mock_aws

from core.config import Secret
from core.redis_client import sync_client
from functions.api.deps import ApiDeps
from functions.api.observability import new_metrics
from functions.api.quotes import QUOTE_FUNCTION_ERROR, RemoteQuotes, lambda_client
from functions.dhan_rest import not_found_key
from functions.quotes import wiring
from functions.ratelimit import caller_key
from functions.secrets import SecretsCache
from functions.settings import Settings
from local.dhan_sim.rest import RestStandIn
from tests.deploy.harness import (
    DUMMY_KEY_ID,
    DUMMY_SECRET,
    LambdaHost,
    Processes,
    free_port,
    inherited_environment,
    spawn_lambda_host,
)
from tests.functions import test_api_support as support
from tests.functions.test_api_support import MakeApi, load_event, with_query

make_api = support.make_api

HANDLER = "functions.quotes.handler"
FUNCTION_NAME = "ltp-quotes"
CLIENT_ID, TOKEN = "1000000001", "quotes-test-token"
PRICED = {"NSE_EQ:11536": 3901.05, "NSE_EQ:2885": 2500.5}
NOT_PRICED = "NSE_EQ:777"  # the stand-in has no price for it: not_found
EVENT_IP = "203.0.113.17"  # the caller of the fixture events (`caller_of`: ip:...)
REGION = "us-east-1"  # the Lambda host's default


@pytest.fixture
def api_via() -> str:
    return "router"  # the Lambda path, which names the caller


pytestmark = pytest.mark.usefixtures("api_via")


@pytest.fixture(scope="module")
def rest() -> Iterator[RestStandIn]:
    with RestStandIn(client_id=CLIENT_ID, access_token=TOKEN, enforce_rate_limit=False,
                     unknown_ids_missing=True) as stand_in:  # fmt: skip
        for key, price in PRICED.items():
            segment, security_id = key.split(":")
            stand_in.set_price(segment, security_id, price)
        yield stand_in


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    started = Processes(tmp_path_factory.mktemp("quotes-hosts"))
    try:
        yield started
    finally:
        started.close()


def start_host(processes: Processes, name: str, env: dict[str, str]) -> LambdaHost:
    pending = spawn_lambda_host(processes, name=name, handler=HANDLER,
                                function_name=FUNCTION_NAME, env={**inherited_environment(), **env},
                                region=REGION, account="123456789012", timeout=10,
                                memory=512)  # fmt: skip
    return pending.ready()


@pytest.fixture(scope="module")
def host(processes: Processes, rest: RestStandIn, redis_url: str) -> Iterator[LambdaHost]:
    """The function with the environment the template gives it, DhanHQ credentials in plain
    variables instead of the secret (no Secrets Manager here)."""
    started = start_host(processes, "quotes", {
        "REDIS_URL": redis_url, "DHAN_CLIENT_ID": CLIENT_ID, "DHAN_ACCESS_TOKEN": TOKEN,
        "DHAN_API_BASE_URL": rest.base_url, "DHAN_REST_MIN_INTERVAL_SECONDS": "0.01",
    })  # fmt: skip
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def broken_host(processes: Processes, rest: RestStandIn) -> Iterator[LambdaHost]:
    """The function with its Redis down: every fetch raises (a Lambda function error)."""
    started = start_host(processes, "quotes-broken", {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DHAN_CLIENT_ID": CLIENT_ID,
        "DHAN_ACCESS_TOKEN": TOKEN, "DHAN_API_BASE_URL": rest.base_url,
    })  # fmt: skip
    try:
        yield started
    finally:
        started.close()


def invocations(host: LambdaHost) -> int:
    return host.process.output().count("START RequestId")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
                        "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/dev/null",
                        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)


@pytest.fixture
def remote(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`remote(host_url)`: the API's RemoteQuotes with the production client for that host."""
    clients: list[Any] = []

    def build(url: str) -> RemoteQuotes:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", url)
        client = lambda_client(budget=Settings().dhan_rest_budget)
        clients.append(client)
        return RemoteQuotes(client=lambda: client, function_name=FUNCTION_NAME,
                            budget=Settings().dhan_rest_budget)  # fmt: skip

    try:
        yield build
    finally:
        for client in clients:
            client.close()


def prices_event(keys: list[str], ip: str = EVENT_IP) -> dict[str, Any]:
    event = with_query(load_event("http_get_current_prices"), "keys=" + ",".join(keys))
    event["requestContext"]["http"]["sourceIp"] = ip
    return event


def without_timestamp(body: bytes) -> dict[str, Any]:
    answer: dict[str, Any] = orjson.loads(body)
    answer.pop("timestamp")
    return answer


# --- the function itself ---------------------------------------------------------------------


def test_the_function_fetches_stores_and_answers_its_fetch_result(
    host: LambdaHost, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    calls = len(rest.calls)
    result = host.invoke({"keys": ["NSE_EQ:11536", NOT_PRICED], "caller": None})
    assert result.function_error is None, result.payload
    assert result.payload == {"prices": {"NSE_EQ:11536": 3901.05},
                              "missing": {NOT_PRICED: "not_found"}, "errors": [], "calls": 1,
                              "unknown": 0, "remembered": 0, "caller_refused": 0}  # fmt: skip
    assert len(rest.calls) == calls + 1
    # Cached for the next poll, and the key Dhan had no price for remembered.
    assert redis_client.get("ltp:NSE_EQ:11536") == b"3901.05"
    assert redis_client.get(not_found_key(NOT_PRICED)) == b"1"


def test_a_caller_gets_one_share_through_the_function(
    host: LambdaHost, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    caller = "ip:198.51.100.4"
    first = host.invoke({"keys": ["NSE_EQ:11536"], "caller": caller}).payload
    assert first["prices"] == {"NSE_EQ:11536": 3901.05}
    assert redis_client.exists(caller_key(caller))
    calls = len(rest.calls)
    over = host.invoke({"keys": ["NSE_EQ:2885"], "caller": caller}).payload
    assert over["missing"] == {"NSE_EQ:2885": "rate_limited"}
    assert over["caller_refused"] == 1 and over["calls"] == 0
    assert [e["code"] for e in over["errors"]] == ["caller_share"]
    assert len(rest.calls) == calls


REFUSED = {
    "not an object": ([], "must be an object"),
    "no keys": ({"caller": None}, "keys must be a list"),
    "keys as text": ({"keys": "NSE_EQ:1333"}, "keys must be a list"),
    "1,001 keys": ({"keys": [f"NSE_EQ:{i}" for i in range(1, 1002)]}, "at most 1000"),
    "a number as a key": ({"keys": [1333]}, "invalid keys"),
    "an unknown segment": ({"keys": ["FOO:1"]}, "unknown segment"),
    "a caller that is no string": ({"keys": ["NSE_EQ:1"], "caller": 7}, "caller must be"),
    "another field": ({"keys": ["NSE_EQ:1"], "budget": 60}, "unknown fields ['budget']"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_an_event_of_another_shape_is_refused_with_a_reason(
    case: str, host: LambdaHost, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    event, reason = REFUSED[case]
    calls = len(rest.calls)
    result = host.invoke(event)
    assert result.function_error is None, result.payload  # an answer, not a stack trace
    assert result.payload["error"] == "invalid_request"
    assert reason in result.payload["message"], result.payload
    assert len(rest.calls) == calls


def test_a_thousand_keys_are_one_call(
    host: LambdaHost, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    keys = [f"NSE_FNO:{50000 + i}" for i in range(1000)]
    calls = len(rest.calls)
    payload = host.invoke({"keys": keys, "caller": "ip:192.0.2.1"}).payload
    assert payload["calls"] == 1 and len(rest.calls) == calls + 1
    assert payload["missing"] == dict.fromkeys(keys, "not_found")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, aws_env: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)


def test_credentials_from_the_secret_forgotten_after_an_auth_error(
    aws: Any, rest: RestStandIn, redis_url: str, redis_client: redis.Redis
) -> None:
    """The function's own wiring (in this process, for moto): the token renewal may put a
    new token at any time; the first auth error makes the next fetch read the secret again."""
    old = orjson.dumps({"client_id": CLIENT_ID, "access_token": "old-token"}).decode()
    arn = aws.create_secret(Name="dhan", SecretString=old)["ARN"]
    settings = Settings(redis_url=redis_url, dhan_secret_arn=arn,
                        dhan_api_base_url=rest.base_url, dhan_rest_min_interval=0.01)
    service = wiring.build(settings, secrets=SecretsCache(client=aws))
    try:
        event = {"keys": ["NSE_EQ:11536"], "caller": None}
        first = service.handle(event)
        assert first["missing"] == {"NSE_EQ:11536": "dhan_auth_error"}
        aws.put_secret_value(SecretId=arn, SecretString=old.replace("old-token", TOKEN))
        second = service.handle(event)
        assert second["prices"] == {"NSE_EQ:11536": 3901.05}
    finally:
        service.redis.close()


def test_the_settings_name_what_the_function_reads() -> None:
    settings = wiring.read_settings({"REDIS_URL": "redis://h:6379/0", "DHAN_SECRET_ARN": "arn:x",
                                     "DHAN_REST_BUDGET_SECONDS": "1.5"})  # fmt: skip
    assert (settings.dhan_secret_arn, settings.dhan_rest_budget) == ("arn:x", 1.5)
    assert wiring.REQUIRED_ENV == {"handler": ("REDIS_URL", "REDIS_AUTH_SECRET_ARN",
                                               "DHAN_SECRET_ARN")}  # fmt: skip


# --- the API's remote path ---------------------------------------------------------------------


def test_the_api_answers_misses_through_the_function_as_it_does_in_process(
    make_api: MakeApi, host: LambdaHost, remote: Any, rest: RestStandIn,
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """The API without any DhanHQ credentials, through the function, answers what the API
    with them answers in-process (the timestamp aside)."""
    keys = ["NSE_EQ:1333", "NSE_EQ:11536", NOT_PRICED]
    through = make_api(deps_overrides={"remote_quotes": remote(host.url)})
    assert not through.deps.settings.dhan_access_token and not through.deps.settings.dhan_secret_arn
    in_process = make_api(dhan_client_id=CLIENT_ID, dhan_access_token=Secret(TOKEN),
                          dhan_api_base_url=rest.base_url, dhan_rest_min_interval=0.01)

    answers = []
    for api in (through, in_process):
        redis_client.flushdb()  # the first fetch cached its price and remembered its not-found
        redis_client.set("ltp:NSE_EQ:1333", "1234.5")
        before = invocations(host)
        answer = api.invoke(prices_event(keys))
        assert answer.status == 200
        answers.append((without_timestamp(answer.body), invocations(host) - before))
    (remote_body, remote_runs), (local_body, local_runs) = answers
    assert (remote_runs, local_runs) == (1, 0)
    assert remote_body == local_body
    assert remote_body["prices"] == {"NSE_EQ:1333": 1234.5, "NSE_EQ:11536": 3901.05}
    assert remote_body["missing"] == {NOT_PRICED: "not_found"}
    assert remote_body["api_fetched_count"] == 1


def test_more_misses_than_one_invocation_takes_are_sent_in_batches(
    make_api: MakeApi, host: LambdaHost, remote: Any, rest: RestStandIn,
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    api = make_api(deps_overrides={"remote_quotes": remote(host.url)})
    keys = [f"NSE_FNO:{60000 + i}" for i in range(1500)]
    calls, before = len(rest.calls), invocations(host)
    body = api.post_prices({"keys": keys}).json()
    assert invocations(host) - before == 2 and len(rest.calls) == calls + 2
    assert body["missing"] == dict.fromkeys(keys, "not_found") and body["errors"] == []
    # The first batch took the caller's share (the second needed only the deployment's slot):
    # the same caller's next miss is refused at once, with no invoke of a second batch.
    refused = api.post_prices({"keys": [f"NSE_FNO:{70000 + i}" for i in range(1500)]}).json()
    assert invocations(host) - before == 3
    assert set(refused["missing"].values()) == {"rate_limited"}
    (entry,) = refused["errors"]
    assert (entry["code"], entry["keys"], entry["segments"]) == ("caller_share", 1500, ["NSE_FNO"])


def test_a_failed_invoke_answers_dhan_error_and_tells_no_details(
    make_api: MakeApi, remote: Any, redis_client: redis.Redis
) -> None:
    api = make_api(deps_overrides={"remote_quotes": remote(f"http://127.0.0.1:{free_port()}")})
    began = time.monotonic()
    answer = api.invoke(prices_event(["NSE_EQ:11536"]))
    assert time.monotonic() - began < 2  # refused at connect; never the read timeout
    assert answer.status == 200
    body = answer.json()
    assert body["missing"] == {"NSE_EQ:11536": "dhan_error"}
    assert body["errors"] == [{"reason": "dhan_error", "code": None, "type": QUOTE_FUNCTION_ERROR,
                               "message": "DhanHQ prices could not be fetched: the quotes "
                                          "function did not answer",
                               "keys": 1, "segments": ["NSE_EQ"]}]  # fmt: skip


def test_a_function_error_answers_dhan_error_for_every_batch_with_one_invoke(
    make_api: MakeApi, broken_host: LambdaHost, remote: Any, redis_client: redis.Redis
) -> None:
    api = make_api(deps_overrides={"remote_quotes": remote(broken_host.url)})
    keys = [f"BSE_EQ:{500000 + i}" for i in range(1500)] + ["NSE_EQ:11536"]
    before = invocations(broken_host)
    body = api.post_prices({"keys": keys}).json()
    assert invocations(broken_host) - before == 1  # the later batches would fail alike
    assert "Traceback" in broken_host.process.output()  # the function did fail (Redis down)
    assert body["missing"] == dict.fromkeys(keys, "dhan_error")
    (entry,) = body["errors"]
    assert (entry["type"], entry["keys"], entry["segments"]) == (
        QUOTE_FUNCTION_ERROR, 1501, ["BSE_EQ", "NSE_EQ"])
    assert "Error" not in entry["message"] and "127.0.0.1" not in answer_text(body)


def answer_text(body: dict[str, Any]) -> str:
    return orjson.dumps(body).decode()


def test_quote_function_name_selects_the_remote_path(
    aws_env: None, redis_url: str
) -> None:
    settings = Settings.from_env({"REDIS_URL": redis_url, "QUOTE_FUNCTION_NAME": FUNCTION_NAME})
    client = sync_client(settings.redis)
    try:
        deps = ApiDeps.for_settings(settings, redis=client, metrics=new_metrics("LtpTest"))
        assert isinstance(deps.remote_quotes, RemoteQuotes)
        local = ApiDeps.for_settings(Settings(redis_url=redis_url), redis=client,
                                     metrics=new_metrics("LtpTest"))  # fmt: skip
        assert local.remote_quotes is None
    finally:
        client.close()
    lam = lambda_client(budget=2.5)
    try:
        config = lam.meta.config
        assert (config.connect_timeout, config.read_timeout) == (1.0, 3.5)
        assert config.retries["total_max_attempts"] == 1
    finally:
        lam.close()


def test_the_function_answer_survives_the_round_trip() -> None:
    """Everything a FetchResult holds comes back as it went (the contract both sides use)."""
    from functions.dhan_rest import FetchResult
    from functions.quotes.contract import answer_of, result_of

    result = FetchResult(prices={"NSE_EQ:1": 1.05, "NSE_EQ:2": 3.0},
                         missing={"NSE_EQ:3": "rate_limited"},
                         errors=[{"reason": "rate_limited", "code": "caller_share"}], calls=1,
                         unknown=2, remembered=3, caller_refused=1)  # fmt: skip
    assert result_of(orjson.loads(orjson.dumps(answer_of(result)))) == result
