from __future__ import annotations

import struct
from datetime import datetime

import pytest

from core.config import Env, Secret
from core.errors import ConfigError
from core.messages import (
    BATCH_UPDATE,
    IST,
    Update,
    batch_update,
    dumps,
    format_price,
    loads,
    ltt_to_datetime,
    parse_price,
    single_update,
)


def f32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def test_prices_are_plain_two_decimal_strings_like_the_seed() -> None:
    assert format_price(f32(2500.5)) == "2500.5"
    assert format_price(f32(1234.55)) == "1234.55"
    assert format_price(f32(100.0)) == "100.0"
    assert parse_price(b"2500.5") == 2500.5
    assert parse_price(None) is None
    assert parse_price(b"nan") is None
    assert parse_price(b"garbage") is None


def test_batch_message_round_trips_with_the_contract_fields() -> None:
    update: Update = {
        "key": "NSE_EQ:1333", "segment": "NSE_EQ", "security_id": "1333",
        "ltp": 1234.55, "ltt": 1_700_000_000, "version": 7, "symbol": "HDFCBANK",
    }
    message = loads(dumps(batch_update([update], timestamp="2026-01-01T00:00:00.000Z")))
    assert message["type"] == BATCH_UPDATE
    assert message["updates"] == [update]
    single = single_update(update, instrument_id=5)
    assert {"type", "symbol", "instrument_id", "ltp", "timestamp", "source", "segment",
            "security_id"} <= set(single)
    assert single["type"] == "screener_ltp_update" and single["security_id"] == "1333"


def test_ltt_is_interpreted_as_ist_wall_clock() -> None:
    # 1_700_000_000 is 2023-11-14 22:13:20 as a UTC epoch; Dhan means that wall-clock time in IST.
    assert ltt_to_datetime(1_700_000_000) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=IST)
    assert ltt_to_datetime(1_700_000_000).isoformat() == "2023-11-14T22:13:20+05:30"


def test_env_casts_and_fails_fast() -> None:
    env = Env({"A": " 5 ", "B": "x", "C": "true", "M": "FULL", "S": "hunter2"})
    assert env.integer("A", 1) == 5
    assert env.integer("MISSING", 7) == 7
    with pytest.raises(ConfigError, match="B must be an integer"):
        env.integer("B", 1)
    with pytest.raises(ConfigError, match=">= 10"):
        env.integer("A", 1, minimum=10)
    assert env.flag("C", False) is True
    assert env.choice("M", "quote", ("ticker", "quote", "full")) == "full"
    with pytest.raises(ConfigError, match="one of"):
        env.choice("B", "quote", ("ticker", "quote"))


def test_secrets_never_show_themselves() -> None:
    secret = Env({"S": "hunter2"}).secret("S")
    assert secret.value == "hunter2"
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert bool(secret) and not Secret("")
