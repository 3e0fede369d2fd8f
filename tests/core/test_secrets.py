"""The DhanHQ secret (core.secrets.parse_dhan_secret), read alike by the streamer and the Lambda
functions: field aliases, a numeric client id, the DHAN_CLIENT_ID fallback, and errors that
never show the token."""

from __future__ import annotations

import json
import traceback
from typing import Any

import pytest

from core.config import Secret
from core.errors import SecretError
from core.secrets import (
    DHAN_CLIENT_FIELDS,
    DHAN_TOKEN_FIELDS,
    DhanCredentials,
    parse_dhan_secret,
)

TOKEN = "tok-Zq81-never-shown"


def secret(**document: Any) -> str:
    return json.dumps(document)


@pytest.mark.parametrize("client_field", DHAN_CLIENT_FIELDS)
@pytest.mark.parametrize("token_field", DHAN_TOKEN_FIELDS)
def test_every_field_alias(client_field: str, token_field: str) -> None:
    credentials = parse_dhan_secret(secret(**{client_field: "1100", token_field: TOKEN}))
    assert credentials == DhanCredentials("1100", Secret(TOKEN))


def test_the_first_non_blank_alias_wins_and_values_are_stripped() -> None:
    text = secret(client_id=" ", DHAN_CLIENT_ID=" 1100 ", clientId="2200",
                  access_token="", DHAN_ACCESS_TOKEN=f"  {TOKEN}\n", token="other")  # fmt: skip
    credentials = parse_dhan_secret(f"  {text}\n")
    assert credentials.client_id == "1100"
    assert credentials.access_token.value == TOKEN


def test_a_numeric_client_id() -> None:
    credentials = parse_dhan_secret('{"client_id": 1100000001, "access_token": "t"}')
    assert credentials.client_id == "1100000001"
    # A non-integer number is no client id (the next alias, then the fallback, are tried).
    assert parse_dhan_secret(secret(client_id=1.5, clientId=7, access_token="t")).client_id == "7"
    with pytest.raises(SecretError, match="client id"):
        parse_dhan_secret(secret(client_id=1.5, access_token="t"))


def test_the_client_id_falls_back_but_the_secret_wins() -> None:
    assert parse_dhan_secret(secret(access_token="t"),
                             fallback_client_id=" 7 ").client_id == "7"  # fmt: skip
    assert parse_dhan_secret(secret(client_id="  ", access_token="t"),
                             fallback_client_id="7").client_id == "7"  # fmt: skip
    assert parse_dhan_secret(secret(client_id="1100", access_token="t"),
                             fallback_client_id="7").client_id == "1100"  # fmt: skip
    with pytest.raises(SecretError, match="client id .*DHAN_CLIENT_ID"):
        parse_dhan_secret(secret(access_token="t"), fallback_client_id="  ")


@pytest.mark.parametrize("token", ["", " ", "\t\n", None, 12345, True, ["t"], {"v": "t"}])
def test_a_blank_or_non_string_token_fails(token: Any) -> None:
    # The token never falls back (there is nothing to fall back to).
    with pytest.raises(SecretError, match="lacks an access token"):
        parse_dhan_secret(secret(client_id="1100", access_token=token), fallback_client_id="7")
    with pytest.raises(SecretError, match="lacks an access token"):
        parse_dhan_secret(secret(client_id="1100"))


def test_both_missing_names_both() -> None:
    with pytest.raises(SecretError, match="lacks a client id .* and an access token"):
        parse_dhan_secret("{}")


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_client_id_is_rejected(value: bool) -> None:
    with pytest.raises(SecretError, match="client id"):
        parse_dhan_secret(secret(client_id=value, access_token="t"))
    # Skipped like any other non-id, so the fallback applies.
    assert parse_dhan_secret(secret(client_id=value, access_token="t"),
                             fallback_client_id="7").client_id == "7"  # fmt: skip


@pytest.mark.parametrize("text", ["", "   ", "not json", TOKEN, json.dumps(TOKEN), "[1]", "null",
                                  json.dumps([{"client_id": "1", "access_token": TOKEN}])])
def test_not_a_json_object(text: str) -> None:
    with pytest.raises(SecretError, match="not a JSON object"):
        parse_dhan_secret(text, fallback_client_id="7")


@pytest.mark.parametrize(
    "text",
    [
        TOKEN,  # the token stored plain
        json.dumps(TOKEN),
        f'{{"client_id": "1", "access_token": "{TOKEN}"',  # truncated JSON
        f"{{'client_id': '1', 'access_token': '{TOKEN}'}}",  # not JSON (single quotes)
        json.dumps([{"client_id": "1", "access_token": TOKEN}]),
        secret(access_token=TOKEN),  # no client id and no fallback
        secret(client_id=True, access_token=TOKEN),
        secret(client_id=TOKEN),  # the token in the wrong field: no access token
        secret(clientId="1", access_token={"value": TOKEN}),
    ],
)
def test_the_token_never_appears_in_the_error(text: str) -> None:
    with pytest.raises(SecretError) as caught:
        parse_dhan_secret(text)
    error = caught.value
    assert TOKEN not in str(error)
    assert TOKEN not in repr(error)
    # Nothing chained either: a JSON decoder's error would carry the whole text.
    assert error.__cause__ is None and error.__context__ is None
    assert TOKEN not in "".join(traceback.format_exception(error))


def test_credentials_hide_the_token_and_are_falsy_unless_complete() -> None:
    credentials = parse_dhan_secret(secret(client_id="1100", access_token=TOKEN))
    assert TOKEN not in repr(credentials) and TOKEN not in str(credentials)
    assert credentials
    assert not DhanCredentials("", Secret(TOKEN))
    assert not DhanCredentials("1100", Secret(""))
