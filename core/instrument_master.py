"""Dhan's scrip-master CSV -> Redis hashes, for symbol lookup by instrument key.

The compact master (`https://images.dhan.co/api-data/api-scrip-master.csv`) is tens of MB, so
it is read as a stream of lines (a file, or an HTTP response via httpx) and written to Redis in
pipelined chunks; nothing holds the whole file. A load writes fresh hashes under temporary names
and renames them over the live ones in one transaction, so a reader sees the old master or the
new one, never half of each.

Exchange + segment letter -> the feed's segment (DhanHQ annexure):
  NSE E -> NSE_EQ    NSE D -> NSE_FNO   NSE C -> NSE_CURRENCY   NSE I -> IDX_I
  BSE E -> BSE_EQ    BSE D -> BSE_FNO   BSE C -> BSE_CURRENCY   BSE I -> IDX_I
  MCX M -> MCX_COMM
Rows of any other pair (and rows whose id is not a valid key) are counted as skipped.

Both of Dhan's layouts are read: the compact one (`SEM_*` columns, symbol in
`SEM_TRADING_SYMBOL`) and the detailed one (`EXCH_ID, SEGMENT, SECURITY_ID, ...`: symbol in
`UNDERLYING_SYMBOL` for equities and indices, `SYMBOL_NAME` otherwise).

Redis (names in core.names): `instruments:symbols` key -> symbol, `instruments:names` key ->
display name, `instruments:by_symbol` `SEGMENT:SYMBOL` -> key (first row wins), and
`instruments:meta` (source, loaded_at, rows, skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import secrets
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from core.errors import CoreError, InstrumentMasterError, InvalidKeyError
from core.instruments import InstrumentKey, parse_key
from core.names import (
    INSTRUMENT_BY_SYMBOL_KEY,
    INSTRUMENT_META_KEY,
    INSTRUMENT_NAMES_KEY,
    INSTRUMENT_SEGMENTS_KEY,
    INSTRUMENT_SYMBOLS_KEY,
)
from core.redis_client import as_text

SEGMENTS: dict[tuple[str, str], str] = {
    ("NSE", "E"): "NSE_EQ",
    ("NSE", "D"): "NSE_FNO",
    ("NSE", "C"): "NSE_CURRENCY",
    ("NSE", "I"): "IDX_I",
    ("BSE", "E"): "BSE_EQ",
    ("BSE", "D"): "BSE_FNO",
    ("BSE", "C"): "BSE_CURRENCY",
    ("BSE", "I"): "IDX_I",
    ("MCX", "M"): "MCX_COMM",
}

DEFAULT_MASTER_URL = "https://images.dhan.co/api-data/api-scrip-master.csv"
SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "nse_sample.csv"

# Fields per HSET in one pipeline: big enough to amortise round trips, small enough that one
# command stays far below Redis's 512 MB query buffer limit.
CHUNK_ROWS = 5_000


class Instrument(NamedTuple):
    key: InstrumentKey
    symbol: str
    name: str
    instrument: str  # EQUITY, INDEX, FUTSTK, OPTIDX, ...


@dataclass(frozen=True)
class _Columns:
    exchange: str
    segment: str
    security_id: str
    symbol: str
    name: tuple[str, ...]
    instrument: str
    underlying: str | None = None  # detailed layout: the symbol of equities and indices


COMPACT = _Columns(
    exchange="SEM_EXM_EXCH_ID",
    segment="SEM_SEGMENT",
    security_id="SEM_SMST_SECURITY_ID",
    symbol="SEM_TRADING_SYMBOL",
    name=("SEM_CUSTOM_SYMBOL", "SM_SYMBOL_NAME"),
    instrument="SEM_INSTRUMENT_NAME",
)
DETAILED = _Columns(
    exchange="EXCH_ID",
    segment="SEGMENT",
    security_id="SECURITY_ID",
    symbol="SYMBOL_NAME",
    name=("DISPLAY_NAME", "SYMBOL_NAME"),
    instrument="INSTRUMENT",
    underlying="UNDERLYING_SYMBOL",
)


def feed_segment(exchange: str, segment: str) -> str | None:
    """The feed's segment name for a master row's exchange and segment letter, if any."""
    return SEGMENTS.get((exchange.strip().upper(), segment.strip().upper()))


def _columns_for(header: Sequence[str]) -> _Columns:
    names = {h.strip().lstrip("\ufeff") for h in header}
    for layout in (COMPACT, DETAILED):
        needed = {layout.exchange, layout.segment, layout.security_id, layout.symbol}
        if needed <= names:
            return layout
    raise InstrumentMasterError(
        "not a Dhan scrip-master CSV: the header has neither the compact columns "
        "(SEM_EXM_EXCH_ID, SEM_SEGMENT, SEM_SMST_SECURITY_ID, SEM_TRADING_SYMBOL) nor the "
        f"detailed ones (EXCH_ID, SEGMENT, SECURITY_ID, SYMBOL_NAME); got {sorted(names)[:8]}"
    )


class ParseStats:
    """Counts kept while a parse streams by (a generator cannot return them alongside rows)."""

    def __init__(self) -> None:
        self.rows = 0
        self.skipped = 0


def parse_scrip_master(
    lines: Iterable[str],
    *,
    segments: frozenset[str] | None = None,
    stats: ParseStats | None = None,
) -> Iterator[Instrument]:
    """Yield the instruments of a scrip-master CSV given as lines, in file order.

    `segments` keeps only those feed segments (e.g. {"NSE_EQ", "IDX_I"}); rows of other
    segments are not counted as skipped. Raises InstrumentMasterError for a foreign header.
    """
    stats = stats if stats is not None else ParseStats()
    reader = csv.reader(iter(lines))
    header = next(reader, None)
    if header is None:
        raise InstrumentMasterError("the scrip-master CSV is empty")
    header = [h.strip().lstrip("\ufeff") for h in header]
    cols = _columns_for(header)
    index = {name: i for i, name in enumerate(header)}

    def cell(row: list[str], name: str | None) -> str:
        i = index.get(name) if name else None
        return row[i].strip() if i is not None and i < len(row) else ""

    for row in reader:
        if not row:
            continue
        segment = feed_segment(cell(row, cols.exchange), cell(row, cols.segment))
        if segment is not None and segments is not None and segment not in segments:
            continue
        symbol = cell(row, cols.symbol)
        if cols.underlying is not None and cell(row, cols.segment).upper() in {"E", "I"}:
            symbol = cell(row, cols.underlying) or symbol
        if segment is None or not symbol:
            stats.skipped += 1
            continue
        try:
            key = parse_key(f"{segment}:{cell(row, cols.security_id)}")
        except InvalidKeyError:
            stats.skipped += 1
            continue
        name = next((v for v in (cell(row, c) for c in cols.name) if v), symbol)
        stats.rows += 1
        yield Instrument(key, symbol, name, cell(row, cols.instrument))


@contextlib.contextmanager
def open_source(source: str | Path, *, timeout: float = 60.0) -> Iterator[Iterator[str]]:
    """Lines of a scrip master from a local path or an http(s) URL, streamed."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        import httpx  # only the URL path pays for the import

        try:
            with httpx.stream("GET", text, timeout=timeout, follow_redirects=True) as response:
                if response.status_code != 200:
                    raise InstrumentMasterError(
                        f"GET {text} answered HTTP {response.status_code}"
                    )
                yield response.iter_lines()
        except httpx.HTTPError as exc:
            raise InstrumentMasterError(f"cannot download {text}: {exc}") from exc
        return
    try:
        # utf-8-sig: a byte-order mark before the header must not become part of its first name.
        handle = open(text, encoding="utf-8-sig", newline="")  # closed by the with below
    except OSError as exc:
        raise InstrumentMasterError(f"cannot read {text}: {exc.strerror or exc}") from exc
    with handle:
        yield handle


class SyncRedis(Protocol):
    def pipeline(self, transaction: bool = ...) -> Any: ...
    def hmget(self, name: str, keys: list[str]) -> Any: ...


@dataclass(frozen=True)
class LoadResult:
    rows: int
    skipped: int
    source: str


def load_into_redis(
    instruments: Iterable[Instrument],
    *,
    redis: SyncRedis,
    source: str,
    stats: ParseStats | None = None,
) -> LoadResult:
    """Replace the instrument hashes with `instruments`, atomically for readers."""
    nonce = secrets.token_hex(4)
    finals = (INSTRUMENT_SYMBOLS_KEY, INSTRUMENT_NAMES_KEY, INSTRUMENT_BY_SYMBOL_KEY)
    temps = tuple(f"{name}:loading:{nonce}" for name in finals)
    rows = 0
    seen_symbols: set[str] = set()
    segments: set[str] = set()
    try:
        for chunk in _chunks(instruments, CHUNK_ROWS):
            symbols = {str(i.key): i.symbol for i in chunk}
            segments.update(i.key.segment for i in chunk)
            names = {str(i.key): i.name for i in chunk}
            by_symbol: dict[str, str] = {}
            for i in chunk:
                alias = f"{i.key.segment}:{i.symbol}"
                if alias not in seen_symbols:  # first row wins, as in the file's order
                    seen_symbols.add(alias)
                    by_symbol[alias] = str(i.key)
            pipe = redis.pipeline(transaction=False)
            pipe.hset(temps[0], mapping=symbols)
            pipe.hset(temps[1], mapping=names)
            if by_symbol:
                pipe.hset(temps[2], mapping=by_symbol)
            pipe.execute()
            rows += len(chunk)
        skipped = stats.skipped if stats is not None else 0
        meta = {
            "source": source,
            "loaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": rows,
            "skipped": skipped,
        }
        swap = redis.pipeline(transaction=True)
        for temp, final in zip(temps, finals, strict=True):
            if rows:
                swap.rename(temp, final)
            else:
                swap.delete(final)
        swap.delete(INSTRUMENT_META_KEY, INSTRUMENT_SEGMENTS_KEY)
        swap.hset(INSTRUMENT_META_KEY, mapping=meta)
        if segments:
            swap.sadd(INSTRUMENT_SEGMENTS_KEY, *sorted(segments))
        swap.execute()
    except BaseException:
        cleanup = redis.pipeline(transaction=False)
        for temp in temps:
            cleanup.delete(temp)
        with contextlib.suppress(Exception):
            cleanup.execute()
        raise
    return LoadResult(rows=rows, skipped=skipped, source=source)


def load_master(
    source: str | Path,
    *,
    redis: SyncRedis,
    segments: frozenset[str] | None = None,
) -> LoadResult:
    """Stream a scrip master from a path or URL into Redis; see the module docstring."""
    stats = ParseStats()
    with open_source(source) as lines:
        instruments = parse_scrip_master(lines, segments=segments, stats=stats)
        return load_into_redis(instruments, redis=redis, source=str(source), stats=stats)


def lookup_symbols(keys: Sequence[InstrumentKey | str], *, redis: SyncRedis) -> dict[str, str]:
    """Symbols of the keys that the loaded master knows (unknown keys are left out)."""
    if not keys:
        return {}
    texts = [str(k) for k in keys]
    values = redis.hmget(INSTRUMENT_SYMBOLS_KEY, texts)
    return {k: as_text(v) for k, v in zip(texts, values, strict=True) if v is not None}


def describe(keys: Sequence[InstrumentKey | str], *, redis: SyncRedis) -> list[dict[str, str]]:
    """`{key, symbol, name}` per key in order, symbol and name empty where the master has none."""
    texts = [str(k) for k in keys]
    if not texts:
        return []
    pipe = redis.pipeline(transaction=False)
    pipe.hmget(INSTRUMENT_SYMBOLS_KEY, texts)
    pipe.hmget(INSTRUMENT_NAMES_KEY, texts)
    symbols, names = pipe.execute()
    return [
        {"key": k, "symbol": as_text(s) if s is not None else "", "name": as_text(n) if n else ""}
        for k, s, n in zip(texts, symbols, names, strict=True)
    ]


def _chunks(items: Iterable[Instrument], size: int) -> Iterator[list[Instrument]]:
    chunk: list[Instrument] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def main(argv: Sequence[str] | None = None) -> int:
    """`ltp-instruments [SOURCE] [--segments ...]`: load a scrip master into REDIS_URL."""
    import redis as redis_lib

    from core.config import DEFAULT_REDIS_URL, Env
    from core.instruments import SEGMENT_CODES, split_keys

    parser = argparse.ArgumentParser(prog="ltp-instruments", description=main.__doc__)
    parser.add_argument(
        "source",
        nargs="?",
        default=str(SAMPLE_PATH),
        help=f"CSV path or URL (default: the NSE sample; Dhan's full master: {DEFAULT_MASTER_URL})",
    )
    parser.add_argument("--redis-url", default=Env().text("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--segments", default="", help="comma-separated feed segments to keep, e.g. NSE_EQ,IDX_I"
    )
    args = parser.parse_args(argv)
    wanted = frozenset(split_keys(args.segments)) or None
    unknown = sorted((wanted or frozenset()) - set(SEGMENT_CODES))
    if unknown:
        parser.error(f"unknown segment(s) {', '.join(unknown)}; one of {' '.join(SEGMENT_CODES)}")
    client = redis_lib.Redis.from_url(args.redis_url)
    try:
        result = load_master(args.source, redis=client, segments=wanted)
    except (CoreError, redis_lib.RedisError) as exc:
        print(f"ltp-instruments: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"loaded {result.rows} instruments ({result.skipped} rows skipped) from {result.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
