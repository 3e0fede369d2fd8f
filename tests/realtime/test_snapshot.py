"""The snapshot never serves a `ws:latest` entry older than the cache TTL as current."""

from __future__ import annotations

from core.messages import Update
from realtime.snapshot import KeyNow, snapshot_prices

NOW = 1_796_000_000.0


def update(key: str, ltp: float, *, age: float) -> Update:
    return {"key": key, "segment": "NSE_EQ", "security_id": key.split(":")[1], "ltp": ltp,
            "ltt": 0, "version": int((NOW - age) * 1e6)}


def test_an_old_latest_entry_falls_back_to_the_cache_or_is_missing() -> None:
    read = {
        "NSE_EQ:1": KeyNow(update("NSE_EQ:1", 10.0, age=2), 10.0),
        "NSE_EQ:2": KeyNow(update("NSE_EQ:2", 20.0, age=31), 20.5),  # cache is newer
        "NSE_EQ:3": KeyNow(update("NSE_EQ:3", 30.0, age=600), None),  # nothing current
        "NSE_EQ:4": KeyNow(update("NSE_EQ:4", 40.0, age=30), None),  # at the TTL: current
    }
    prices, missing = snapshot_prices(read, clock=lambda: NOW)
    assert prices["NSE_EQ:1"]["ltp"] == 10.0 and "version" in prices["NSE_EQ:1"]
    assert prices["NSE_EQ:2"] == {"ltp": 20.5}
    assert prices["NSE_EQ:4"]["ltp"] == 40.0
    assert missing == ["NSE_EQ:3"]


def test_a_version_that_is_no_time_carries_no_age() -> None:
    entry: Update = {"key": "NSE_EQ:1", "segment": "NSE_EQ", "security_id": "1", "ltp": 1.5,
                     "ltt": 0, "version": 42}
    prices, missing = snapshot_prices({"NSE_EQ:1": KeyNow(entry, None)}, clock=lambda: NOW)
    assert prices["NSE_EQ:1"]["version"] == 42 and missing == []
