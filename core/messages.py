"""Message shapes on `live_ltp_updates` and to browsers, compatible with the Rails seed.

Batch form (the streamer's, one per flush):
  {"type": "screener_ltp_batch_update", "timestamp": ISO-8601 UTC, "source": "websocket",
   "updates": [{"key", "segment", "security_id", "ltp", "ltt", "version", "symbol"?}]}
Single form (seed's `screener_ltp_update`, kept for old consumers):
  {"type", "symbol", "instrument_id", "ltp", "timestamp", "source", "segment", "security_id"}

`ltt` is the feed's raw last-trade time (epoch seconds as Dhan sends them; community code says
IST wall clock). `ltt_to_datetime` is the one place that interprets it.
`version` is per-key and strictly increasing, so a consumer drops any value older than the one
it shows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypedDict

import orjson

BATCH_UPDATE = "screener_ltp_batch_update"
SINGLE_UPDATE = "screener_ltp_update"
SOURCE_WEBSOCKET = "websocket"

IST = timezone(timedelta(hours=5, minutes=30), "IST")


class _UpdateRequired(TypedDict):
    key: str
    segment: str
    security_id: str
    ltp: float
    ltt: int
    version: int


class Update(_UpdateRequired, total=False):
    symbol: str


def round_price(price: float) -> float:
    """Feed prices are float32: two decimals is what the exchange quotes."""
    return round(price, 2)


def format_price(price: float) -> str:
    """The Redis cache value: a plain decimal string, as the seed's `ltp.to_f.to_s`."""
    return repr(round_price(price))


def parse_price(value: bytes | str | None) -> float | None:
    """A cached value back to a number; None for a miss or anything not a finite price."""
    if value is None:
        return None
    try:
        price = float(value)
    except ValueError:
        return None
    if price != price or price in (float("inf"), float("-inf")):
        return None
    return price


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ltt_to_datetime(ltt: int) -> datetime:
    """Dhan encodes IST wall-clock time as if it were UTC epoch seconds."""
    return datetime.fromtimestamp(ltt, UTC).replace(tzinfo=IST)


def batch_update(updates: list[Update], *, timestamp: str | None = None) -> dict[str, Any]:
    return {
        "type": BATCH_UPDATE,
        "timestamp": timestamp or utc_now_iso(),
        "source": SOURCE_WEBSOCKET,
        "updates": updates,
    }


def single_update(update: Update, *, instrument_id: int | None = None) -> dict[str, Any]:
    """The seed's one-tick message, for consumers written against the Rails system."""
    return {
        "type": SINGLE_UPDATE,
        "symbol": update.get("symbol"),
        "instrument_id": instrument_id,
        "ltp": update["ltp"],
        "timestamp": utc_now_iso(),
        "source": SOURCE_WEBSOCKET,
        "segment": update["segment"],
        "security_id": update["security_id"],
    }


def dumps(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)
