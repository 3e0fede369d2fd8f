from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from core.errors import ConfigError
from core.instruments import InstrumentKey
from streamer.errors import CredentialsError
from streamer.settings import CredentialSource, load_settings


def test_defaults() -> None:
    s = load_settings({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.feed_url == "wss://api-feed.dhan.co"
    assert s.mode == "quote"
    assert s.keys == ()
    assert s.flush_interval == 0.005
    assert s.silence_timeout == 90
    assert s.auto_stop and not s.hours.always_open
    assert (s.max_connections, s.per_connection) == (5, 5000)
    assert s.instance_id


def test_environment_and_cli_overrides() -> None:
    env = {
        "REDIS_URL": "redis://example:6380/1",
        "DHAN_FEED_URL": "ws://127.0.0.1:9000",
        "DHANHQ_WS_MODE": "FULL",
        "STREAM_KEYS": "NSE_EQ:1333, IDX_I:13",
        "STREAMER_FLUSH_INTERVAL_MS": "2",
        "STREAMER_ALWAYS_OPEN": "yes",
        "STREAMER_AUTO_STOP": "off",
        "STREAMER_INSTANCE_ID": "one",
        "STREAMER_MARKET_CLOSE": "15:00",
    }
    s = load_settings(env)
    assert s.mode == "full"
    assert s.keys == (InstrumentKey("NSE_EQ", "1333"), InstrumentKey("IDX_I", "13"))
    assert s.flush_interval == 0.002
    assert s.hours.always_open and not s.auto_stop
    assert s.hours.close.hour == 15 and s.hours.close.minute == 0
    cli = load_settings(env, keys="BSE_EQ:500325", mode="ticker", feed_url="ws://other",
                        redis_url="redis://cli", auto_stop=True, instance_id="two")
    assert cli.keys == (InstrumentKey("BSE_EQ", "500325"),)
    assert (cli.mode, cli.feed_url, cli.redis_url, cli.auto_stop, cli.instance_id) == (
        "ticker", "ws://other", "redis://cli", True, "two")


@pytest.mark.parametrize(
    ("env", "cli", "message"),
    [
        ({"DHANHQ_WS_MODE": "depth"}, {}, "DHANHQ_WS_MODE"),
        ({}, {"mode": "depth"}, "--mode"),
        ({"STREAM_KEYS": "NSE_EQ:x"}, {}, "STREAM_KEYS"),
        ({}, {"keys": "FOO:1"}, "--keys"),
        ({"DHAN_FEED_URL": "http://x"}, {}, "DHAN_FEED_URL"),
        ({"STREAMER_MAX_CONNECTIONS": "6"}, {}, "at most 5"),
        ({"STREAMER_PER_CONNECTION": "5001"}, {}, "at most 5"),
        ({"STREAMER_HEARTBEAT_S": "31"}, {}, "<= 30"),
        ({"STREAMER_SILENCE_TIMEOUT_S": "soon"}, {}, "STREAMER_SILENCE_TIMEOUT_S"),
        ({"STREAMER_MARKET_OPEN": "9"}, {}, "STREAMER_MARKET_OPEN"),
        ({"STREAMER_LOG_LEVEL": "LOUD"}, {}, "STREAMER_LOG_LEVEL"),
    ],
)
def test_bad_settings_fail_with_the_name(env: dict[str, str], cli: dict[str, Any],
                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env, **cli)


def test_credentials_from_the_environment_are_re_read() -> None:
    env = {"DHAN_CLIENT_ID": "1000000001", "DHAN_ACCESS_TOKEN": "tok-1"}
    source = CredentialSource(environ=env)
    first = source.read()
    assert first.client_id == "1000000001" and first.access_token.value == "tok-1"
    assert "tok-1" not in repr(first)
    env["DHAN_ACCESS_TOKEN"] = "tok-2"
    assert source.read().access_token.value == "tok-2"


def test_missing_credentials_say_what_is_missing() -> None:
    with pytest.raises(CredentialsError, match="client id and access token missing"):
        CredentialSource(environ={}).read()
    with pytest.raises(CredentialsError, match="access token missing"):
        CredentialSource(environ={"DHAN_CLIENT_ID": "1"}).read()
    with pytest.raises(ValueError):
        CredentialSource(environ={}, secret_arn="arn:aws:secretsmanager:x")


@pytest.fixture
def secrets_client() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="ap-south-1")


async def test_credentials_from_secrets_manager(secrets_client: Any) -> None:
    arn = secrets_client.create_secret(
        Name="dhan", SecretString=json.dumps({"client_id": "42", "access_token": "s-1"})
    )["ARN"]
    source = CredentialSource(environ={"DHAN_ACCESS_TOKEN": "ignored"}, secret_arn=arn,
                              secrets_client=secrets_client)
    first = await source.fetch()
    assert (first.client_id, first.access_token.value) == ("42", "s-1")
    secrets_client.put_secret_value(SecretId=arn, SecretString=json.dumps(
        {"accessToken": "s-2"}))
    # The id falls back to the environment when the secret only carries the token.
    source = CredentialSource(environ={"DHAN_CLIENT_ID": "7"}, secret_arn=arn,
                              secrets_client=secrets_client)
    second = await source.fetch()
    assert (second.client_id, second.access_token.value) == ("7", "s-2")


def test_unreadable_secrets_are_credentials_errors(secrets_client: Any) -> None:
    missing = CredentialSource(environ={}, secret_arn="nope", secrets_client=secrets_client)
    with pytest.raises(CredentialsError, match="cannot read secret nope"):
        missing.read()
    arn = secrets_client.create_secret(Name="bad", SecretString="[1]")["ARN"]
    with pytest.raises(CredentialsError, match="not a JSON object"):
        CredentialSource(environ={}, secret_arn=arn, secrets_client=secrets_client).read()


def test_the_secret_is_read_by_the_shared_parser(secrets_client: Any) -> None:
    import core.secrets

    arn = secrets_client.create_secret(
        Name="dhan", SecretString=json.dumps({"dhanClientId": 1100000001, "token": " s-1 "})
    )["ARN"]
    read = CredentialSource(environ={"DHAN_CLIENT_ID": "7"}, secret_arn=arn,
                            secrets_client=secrets_client).read()  # fmt: skip
    assert isinstance(read, core.secrets.DhanCredentials)
    assert (read.client_id, read.access_token.value) == ("1100000001", "s-1")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"client_id": "42", "access_token": "   "}, "lacks an access token"),
        ({"client_id": "42", "access_token": 12345}, "lacks an access token"),
        ({"client_id": True, "access_token": "tok-never-shown"}, "lacks a client id"),
        ({"access_token": "tok-never-shown"}, "lacks a client id"),
        (["tok-never-shown"], "not a JSON object"),
    ],
)
def test_a_bad_secret_is_a_credentials_error_without_the_token(
    secrets_client: Any, document: Any, message: str
) -> None:
    arn = secrets_client.create_secret(Name="dhan", SecretString=json.dumps(document))["ARN"]
    source = CredentialSource(environ={"DHAN_ACCESS_TOKEN": "env-token"}, secret_arn=arn,
                              secrets_client=secrets_client)  # fmt: skip
    with pytest.raises(CredentialsError, match=message) as caught:
        source.read()
    assert arn in str(caught.value)
    assert "tok-never-shown" not in str(caught.value)
    assert "env-token" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_secret_without_a_secret_string_is_a_credentials_error(secrets_client: Any) -> None:
    arn = secrets_client.create_secret(Name="binary", SecretBinary=b"\x00")["ARN"]
    with pytest.raises(CredentialsError, match="not a JSON object"):
        CredentialSource(environ={}, secret_arn=arn, secrets_client=secrets_client).read()
