"""Settings from the environment, secrets from Secrets Manager (moto) with a cache, and the
admin key / DhanHQ credentials resolved through them by the API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from core.config import Secret
from core.errors import ConfigError
from functions.errors import SecretError
from functions.secrets import (
    SecretsCache,
    pick_field,
    resolve_admin_key,
    resolve_dhan_credentials,
)
from functions.settings import Settings
from local.dhan_sim.rest import RestStandIn
from tests.functions import test_api_support as support
from tests.functions.test_api_support import MakeApi

make_api = support.make_api

REGION = "ap-south-1"


# --- settings ----------------------------------------------------------------------------------


def test_settings_defaults_and_parsing() -> None:
    defaults = Settings.from_env({})
    assert defaults.redis_url == "redis://127.0.0.1:6379/0"
    assert defaults.dhan_api_base_url == "https://api.dhan.co/v2"
    assert defaults.ws_mode == "quote"
    assert not defaults.streamer_managed
    assert not defaults.admin_api_key

    settings = Settings.from_env({
        "REDIS_URL": "rediss://:pw@cache.example:6379/0", "DHAN_API_BASE_URL": "http://x/v2/",
        "DHAN_REST_BUDGET_SECONDS": "1.5", "DHANHQ_WS_MODE": "FULL", "ADMIN_API_KEY": "k",
        "STREAMER_CLUSTER": "c", "STREAMER_SERVICE": "s",
    })  # fmt: skip
    assert settings.dhan_api_base_url == "http://x/v2"
    assert settings.dhan_rest_budget == 1.5
    assert settings.ws_mode == "full"
    assert settings.streamer_managed
    assert settings.admin_api_key.value == "k"
    assert "k" not in repr(settings.admin_api_key)
    assert "'k'" not in repr(settings)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"STREAMER_CLUSTER": "c"}, "STREAMER_SERVICE"),
        ({"REDIS_URL": "http://nope"}, "REDIS_URL"),
        ({"DHAN_REST_TIMEOUT_SECONDS": "soon"}, "DHAN_REST_TIMEOUT_SECONDS"),
        ({"DHANHQ_WS_MODE": "depth"}, "DHANHQ_WS_MODE"),
    ],
)
def test_bad_settings_fail_fast_with_the_variable_named(environ: dict[str, str],
                                                        message: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(environ)


def test_a_redis_password_never_reaches_the_error() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"REDIS_URL": "http://user:hunter2@host"})
    assert "hunter2" not in str(raised.value)


# --- Secrets Manager ---------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)


def test_values_are_cached_for_the_ttl_then_refreshed(aws: Any) -> None:
    arn = aws.create_secret(Name="admin", SecretString="first")["ARN"]
    now = [1000.0]
    cache = SecretsCache(client=aws, ttl_seconds=300, clock=lambda: now[0])
    assert cache.get(arn) == "first"
    aws.put_secret_value(SecretId=arn, SecretString="second")
    now[0] += 299
    assert cache.get(arn) == "first"
    now[0] += 2
    assert cache.get(arn) == "second"
    aws.put_secret_value(SecretId=arn, SecretString="third")
    cache.invalidate(arn)
    assert cache.get(arn) == "third"


def test_the_last_good_value_survives_a_failed_refresh(aws: Any) -> None:
    arn = aws.create_secret(Name="admin", SecretString="good")["ARN"]
    now = [0.0]
    cache = SecretsCache(client=aws, ttl_seconds=10, clock=lambda: now[0])
    assert cache.get(arn) == "good"
    aws.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    now[0] += 60
    assert cache.get(arn) == "good"
    with pytest.raises(SecretError, match="ResourceNotFoundException"):
        SecretsCache(client=aws).get(arn)


def test_the_client_is_built_only_when_a_secret_is_read(aws: Any) -> None:
    built: list[int] = []

    def factory() -> Any:
        built.append(1)
        return aws

    cache = SecretsCache(client_factory=factory)
    assert built == []
    arn = aws.create_secret(Name="x", SecretString="v")["ARN"]
    cache.get(arn)
    cache.get(arn)
    assert built == [1]


@pytest.mark.parametrize(
    ("text", "value"),
    [("plain-key", "plain-key"), ('{"ADMIN_API_KEY": "k1"}', "k1"), ('{"api_key": " k2 "}', "k2")],
)
def test_admin_secret_shapes(text: str, value: str) -> None:
    assert pick_field(text, ("ADMIN_API_KEY", "api_key"), allow_plain=True) == value


def test_json_secret_without_the_field_is_an_error() -> None:
    with pytest.raises(SecretError, match="ADMIN_API_KEY"):
        pick_field('{"other": "x"}', ("ADMIN_API_KEY",), allow_plain=True)
    with pytest.raises(SecretError, match="non-blank"):
        pick_field('{"ADMIN_API_KEY": " "}', ("ADMIN_API_KEY",), allow_plain=True)
    # Text that opens like JSON is never its own (guessable) plain key.
    for broken in ('{"ADMIN_API_KEY": ""', '{"ADMIN_API_KEY": "k"'):
        with pytest.raises(SecretError, match="does not parse") as raised:
            pick_field(broken, ("ADMIN_API_KEY",), allow_plain=True)
        assert raised.value.__cause__ is None
    # A raw tab inside a hand-typed value is tolerated (and stripped).
    assert pick_field('{"ADMIN_API_KEY": "\tk1\t"}', ("ADMIN_API_KEY",), allow_plain=True) == "k1"
    with pytest.raises(SecretError):
        pick_field("plain", ("client_id",), allow_plain=False)


def test_resolution_prefers_the_arn_over_the_environment(aws: Any) -> None:
    arn = aws.create_secret(Name="admin", SecretString='{"api_key": "from-sm"}')["ARN"]
    dhan = aws.create_secret(Name="dhan", SecretString='{"client_id": "1100", '
                                                       '"access_token": "tok"}')["ARN"]  # fmt: skip
    cache = SecretsCache(client=aws)
    settings = Settings(admin_api_key=Secret("from-env"), admin_secret_arn=arn,
                        dhan_client_id="env-id", dhan_secret_arn=dhan)  # fmt: skip
    assert resolve_admin_key(settings, secrets=cache).value == "from-sm"
    credentials = resolve_dhan_credentials(settings, secrets=cache)
    assert credentials.client_id == "1100"
    assert credentials.access_token.value == "tok"
    env_only = Settings(admin_api_key=Secret("from-env"))
    assert resolve_admin_key(env_only, secrets=None).value == "from-env"


DHAN_TOKEN = "tok-Qx7-never-shown"

# (SecretString, DHAN_CLIENT_ID, the (client id, token) read, or None: a SecretError)
DHAN_SECRETS: list[tuple[str, str, tuple[str, str] | None]] = [
    ('{"client_id": "1100", "access_token": "t1"}', "env-id", ("1100", "t1")),
    ('{"dhanClientId": "1100", "accessToken": " t1 "}', "", ("1100", "t1")),
    ('{"client_id": 1100000001, "token": "t1"}', "", ("1100000001", "t1")),
    ('{"access_token": "t1"}', "env-id", ("env-id", "t1")),
    ('{"client_id": true, "access_token": "t1"}', "env-id", ("env-id", "t1")),
    ('{"client_id": true, "access_token": "t1"}', "", None),
    ('{"access_token": "t1"}', "", None),
    ('{"client_id": "1100", "access_token": "  "}', "env-id", None),
    ('{"client_id": "1100", "access_token": 5, "token": null}', "env-id", None),
    (f'{{"client_id": false, "access_token": "{DHAN_TOKEN}"}}', "", None),
    (DHAN_TOKEN, "env-id", None),
    (f'{{"client_id": "1100", "access_token": "{DHAN_TOKEN}"', "env-id", None),
]


@pytest.mark.parametrize(("text", "env_client_id", "expected"), DHAN_SECRETS)
def test_the_api_and_the_streamer_read_the_dhan_secret_alike(
    aws: Any, text: str, env_client_id: str, expected: tuple[str, str] | None
) -> None:
    from streamer.errors import CredentialsError
    from streamer.settings import CredentialSource

    arn = aws.create_secret(Name="dhan", SecretString=text)["ARN"]
    settings = Settings(dhan_client_id=env_client_id, dhan_access_token=Secret("env-token"),
                        dhan_secret_arn=arn)  # fmt: skip
    environ = {"DHAN_CLIENT_ID": env_client_id, "DHAN_ACCESS_TOKEN": "env-token"}
    streamer = CredentialSource(environ=environ, secret_arn=arn, secrets_client=aws)
    if expected is None:
        with pytest.raises(SecretError) as api_error:
            resolve_dhan_credentials(settings, secrets=SecretsCache(client=aws))
        with pytest.raises(CredentialsError) as streamer_error:
            streamer.read()
        for error in (api_error.value, streamer_error.value):
            assert DHAN_TOKEN not in str(error)
            assert error.__cause__ is None
        assert str(api_error.value) in str(streamer_error.value)
        return
    api = resolve_dhan_credentials(settings, secrets=SecretsCache(client=aws))
    assert (api.client_id, api.access_token.value) == expected
    assert streamer.read() == api


def test_the_dhan_secret_error_is_the_core_one() -> None:
    import core.errors

    assert SecretError is core.errors.SecretError


# --- through the API ---------------------------------------------------------------------------


def test_admin_key_from_secrets_manager_guards_start(make_api: MakeApi, aws: Any) -> None:
    arn = aws.create_secret(Name="admin", SecretString='{"ADMIN_API_KEY": "sm-admin-key"}')["ARN"]
    api = make_api(admin_secret_arn=arn,
                   deps_overrides={"secrets": SecretsCache(client=aws)})  # fmt: skip
    body = {"name": "a", "keys": ["NSE_EQ:1"]}
    assert api.start(body, key="wrong").status == 401
    assert api.start(body, key="sm-admin-key").status == 200


def test_an_unreadable_admin_secret_fails_closed(make_api: MakeApi, aws: Any) -> None:
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:missing-AbCdEf"
    api = make_api(admin_secret_arn=arn, deps_overrides={"secrets": SecretsCache(client=aws)})
    answer = api.start({"name": "a", "keys": ["NSE_EQ:1"]}, key="anything")
    assert answer.status == 503
    assert answer.json()["error"] == "secret_unavailable"


def test_dhan_credentials_from_secrets_manager_and_a_renewed_token(
    make_api: MakeApi, aws: Any
) -> None:
    old = '{"client_id": "1000000001", "access_token": "old-token"}'
    arn = aws.create_secret(Name="dhan", SecretString=old)["ARN"]
    with RestStandIn(client_id="1000000001", access_token="new-token",
                     enforce_rate_limit=False) as rest:  # fmt: skip
        rest.set_price("NSE_EQ", "1333", 1234.5)
        api = make_api(dhan_secret_arn=arn, dhan_api_base_url=rest.base_url,
                       dhan_rest_min_interval=0.01,
                       deps_overrides={"secrets": SecretsCache(client=aws)})  # fmt: skip
        assert api.get_prices("keys=NSE_EQ:1333").json()["missing"] == {
            "NSE_EQ:1333": "dhan_auth_error"}  # fmt: skip
        # Another process renews the token into the secret; the auth error dropped our copy.
        aws.put_secret_value(SecretId=arn, SecretString=old.replace("old-token", "new-token"))
        body = api.get_prices("keys=NSE_EQ:1333").json()
        assert body["prices"] == {"NSE_EQ:1333": 1234.5}


# --- Redis AUTH from a secret ------------------------------------------------------------------


@pytest.fixture
def redis_with_password() -> Iterator[tuple[str, str]]:
    import shutil
    import subprocess
    import tempfile
    import time

    from local.redis_server import free_port, ping

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs a redis-server binary to run one with requirepass")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", workdir,
                                 "--requirepass", "first-auth-token"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while not ping(f"redis://:first-auth-token@127.0.0.1:{port}/0"):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
            yield url, "first-auth-token"
        finally:
            proc.terminate()
            proc.wait(5)


def test_redis_auth_token_from_a_secret_follows_rotation(
    aws: Any, redis_with_password: tuple[str, str]
) -> None:
    from functions.api.deps import connect_redis

    url, token = redis_with_password
    arn = aws.create_secret(Name="redis-auth", SecretString=token)["ARN"]
    settings = Settings(redis_url=url, redis_auth_secret_arn=arn)
    client = connect_redis(settings, secrets=SecretsCache(client=aws, ttl_seconds=0))
    try:
        assert client.ping()
        client.config_set("requirepass", "second-auth-token")
        aws.put_secret_value(SecretId=arn, SecretString="second-auth-token")
        client.connection_pool.disconnect()  # as after a failover: every new connection AUTHs
        assert client.ping()
    finally:
        client.close()

    plain = connect_redis(Settings(redis_url=url, redis_auth_token=Secret("second-auth-token")))
    try:
        assert plain.ping()
    finally:
        plain.close()


# --- WebSocket connect tokens ------------------------------------------------------------------


def test_ws_token_route_mints_tokens_the_authorizer_accepts(make_api: MakeApi, aws: Any) -> None:
    from functions.wsauth import verify_token

    arn = aws.create_secret(Name="ws", SecretString="hmac-key-0123456789")["ARN"]
    api = make_api(ws_token_secret_arn=arn, deps_overrides={"secrets": SecretsCache(client=aws)})
    event = support.load_event("http_get_health")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/api/v1/ws_token"
    answer = api.invoke(event)
    assert answer.status == 200
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    claims = verify_token(body["token"], "hmac-key-0123456789", source_ip="203.0.113.7")
    assert claims.expires_at - claims.issued_at == body["expires_in"] == 60
    # Public mode (b): bound to the address it was minted for, named by it.
    assert (claims.subject, claims.source_ip, claims.purpose) == (
        "ip:203.0.113.7", "203.0.113.7", "ws-connect")

    open_api = make_api()
    assert open_api.invoke(event).json() == {"token": None, "expires_in": None}


def ws_token_event(source_ip: str = "203.0.113.7", *, sub: str | None = None) -> dict[str, Any]:
    event = support.load_event("http_get_health")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/api/v1/ws_token"
    event["requestContext"]["http"]["sourceIp"] = source_ip
    if sub is not None:
        event["requestContext"]["authorizer"] = {
            "jwt": {"claims": {"sub": sub, "iss": "https://login.example.com/"}, "scopes": None}}
    return event


def test_ws_token_in_oidc_mode_carries_the_subject_and_needs_one(make_api: MakeApi) -> None:
    from functions.wsauth import verify_token

    api = make_api(ws_token_secret=Secret("k" * 32), ws_token_identity="oidc",
                   ws_token_ttl_seconds=45)  # fmt: skip
    answer = api.invoke(ws_token_event("198.51.100.4", sub="user-42"))
    assert answer.status == 200, answer.body
    claims = verify_token(answer.json()["token"], "k" * 32, source_ip="198.51.100.4")
    assert (claims.subject, claims.source_ip) == ("user-42", "198.51.100.4")
    assert claims.expires_at - claims.issued_at == answer.json()["expires_in"] == 45
    # The JWT authorizer should have stopped it; if a request gets here without a subject,
    # it is refused, not minted as for an anonymous address.
    refused = api.invoke(ws_token_event("198.51.100.4"))
    assert refused.status == 401
    assert refused.json()["error"] == "unauthorized"


def test_ws_token_is_limited_per_subject_in_oidc_mode(make_api: MakeApi) -> None:
    api = make_api(ws_token_secret=Secret("k" * 32), ws_token_identity="oidc",
                   ws_token_per_ip_per_minute=2, deps_overrides={"wall_clock": lambda: 6000.0})
    assert [api.invoke(ws_token_event("198.51.100.4", sub="u1")).status for _ in range(3)] == [
        200, 200, 429]
    # Another user behind the same address (an office NAT) is counted apart.
    assert api.invoke(ws_token_event("198.51.100.4", sub="u2")).status == 200


# --- blank secrets fail closed -------------------------------------------------------------


BLANK_ENV = [
    ({"ADMIN_API_KEY": "\t"}, "ADMIN_API_KEY"),
    ({"ADMIN_API_KEY": ""}, "ADMIN_API_KEY"),
    ({"ADMIN_SECRET_ARN": "  "}, "ADMIN_SECRET_ARN"),
    ({"WS_TOKEN_SECRET": "  "}, "WS_TOKEN_SECRET"),
    ({"WS_TOKEN_SECRET_ARN": "\n"}, "WS_TOKEN_SECRET_ARN"),
]


@pytest.mark.parametrize(("environ", "variable"), BLANK_ENV)
def test_a_blank_guard_variable_is_recorded_not_taken_for_absent(
    environ: dict[str, str], variable: str
) -> None:
    from functions.secrets import resolve_ws_token_secret

    settings = Settings.from_env(environ)
    assert settings.blank_secrets == {variable}
    resolve = resolve_admin_key if variable.startswith("ADMIN") else resolve_ws_token_secret
    with pytest.raises(SecretError, match=f"{variable} is set but blank"):
        resolve(settings, secrets=None)
    # Absent stays "no check" (the local run without keys).
    assert not Settings.from_env({}).blank_secrets
    assert not resolve(Settings.from_env({}), secrets=None)


def test_token_settings_are_read_and_checked() -> None:
    settings = Settings.from_env({"WS_TOKEN_TTL_SECONDS": "90", "WS_TOKEN_PER_IP_PER_MINUTE": "0",
                                  "WS_TOKEN_IDENTITY": "OIDC"})  # fmt: skip
    assert (settings.ws_token_ttl_seconds, settings.ws_token_per_ip_per_minute,
            settings.ws_token_identity) == (90, 0, "oidc")  # fmt: skip
    defaults = Settings.from_env({})
    assert (defaults.ws_token_ttl_seconds, defaults.ws_token_per_ip_per_minute,
            defaults.ws_token_identity) == (60, 30, "ip")  # fmt: skip
    for environ, message in (({"WS_TOKEN_TTL_SECONDS": "0"}, ">= 1"),
                             ({"WS_TOKEN_TTL_SECONDS": "7200"}, "<= 3600"),
                             ({"WS_TOKEN_PER_IP_PER_MINUTE": "-1"}, ">= 0"),
                             ({"WS_TOKEN_IDENTITY": "cookie"}, "ip, oidc")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            Settings.from_env(environ)


def blank_settings(environ: dict[str, str]) -> frozenset[str]:
    return Settings.from_env(environ).blank_secrets


def test_a_whitespace_admin_key_refuses_start_and_stop(make_api: MakeApi) -> None:
    api = make_api(blank_secrets=blank_settings({"ADMIN_API_KEY": "\t"}))
    for answer in (api.start({"name": "a", "keys": ["NSE_EQ:1"]}, key=None),
                   api.start({"name": "a", "keys": ["NSE_EQ:1"]}, key="\t"),
                   api.stop({"name": "a"}, key="anything")):  # fmt: skip
        assert answer.status == 503
        assert answer.json()["error"] == "secret_unavailable"
        assert answer.headers["retry-after"]
    assert api.health().status == 200  # the rest of the API keeps working


def test_a_whitespace_ws_token_secret_refuses_tokens(make_api: MakeApi) -> None:
    api = make_api(blank_secrets=blank_settings({"WS_TOKEN_SECRET": "  "}))
    answer = api.invoke(ws_token_event())
    assert answer.status == 503
    assert answer.json()["error"] == "secret_unavailable"
    assert "token" not in answer.json()


@pytest.mark.parametrize("stored", ["   ", "\n\t", '{"ADMIN_API_KEY": "  "}',
                                    '{"api_key": ""}'])
def test_a_blank_admin_secret_in_secrets_manager_fails_closed(
    make_api: MakeApi, aws: Any, stored: str
) -> None:
    arn = aws.create_secret(Name="admin", SecretString=stored)["ARN"]
    cache = SecretsCache(client=aws)
    settings = Settings(admin_secret_arn=arn)
    with pytest.raises(SecretError):
        resolve_admin_key(settings, secrets=cache)
    api = make_api(admin_secret_arn=arn, deps_overrides={"secrets": cache})
    answer = api.start({"name": "a", "keys": ["NSE_EQ:1"]}, key=None)
    assert answer.status == 503
    assert answer.json()["error"] == "secret_unavailable"


@pytest.mark.parametrize("stored", ["  ", '{"WS_TOKEN_SECRET": " "}', '{"secret": "\t"}'])
def test_a_blank_ws_token_secret_in_secrets_manager_fails_closed(
    make_api: MakeApi, aws: Any, stored: str
) -> None:
    arn = aws.create_secret(Name="ws", SecretString=stored)["ARN"]
    api = make_api(ws_token_secret_arn=arn, deps_overrides={"secrets": SecretsCache(client=aws)})
    answer = api.invoke(ws_token_event())
    assert answer.status == 503
    assert answer.json()["error"] == "secret_unavailable"


def test_a_blank_redis_auth_token_is_a_configuration_error() -> None:
    # Fail fast at start (core.redis_client): a blank token is never "no AUTH".
    for blank in ("", "  "):
        with pytest.raises(ConfigError, match="REDIS_AUTH_TOKEN is set but blank"):
            Settings.from_env({"REDIS_AUTH_TOKEN": blank})


# --- who asks for a token (pure) ---------------------------------------------------------------


def test_the_requester_comes_from_the_gateway_never_from_headers() -> None:
    from functions.api.tokens import Requester, limit_key, requester, window_at

    event = ws_token_event("198.51.100.4")
    event["headers"]["x-forwarded-for"] = "10.9.9.9"
    assert requester(event, client_host="10.1.1.1") == Requester(
        "ip:198.51.100.4", "198.51.100.4", "ip:198.51.100.4")
    assert requester(ws_token_event("198.51.100.4", sub="u-1")) == Requester(
        "u-1", "198.51.100.4", "sub:u-1")
    # Served without Mangum (uvicorn): the socket's peer; with nothing at all: one bucket.
    assert requester(None, client_host="10.1.1.1").subject == "ip:10.1.1.1"
    assert requester(None) == Requester("browser", None, "unknown")
    assert requester({"requestContext": "junk"}).subject == "browser"
    # Windows are whole minutes; Retry-After is at least 1 s.
    assert window_at(120.0) == (2, 60) and window_at(179.2) == (2, 1) and window_at(179.99) == (
        2, 1)
    assert len(limit_key("sub:" + "x" * 300, 5)) < 100
