from __future__ import annotations

import csv
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core import instrument_master as im
from core.errors import InstrumentMasterError
from core.instruments import InstrumentKey, parse_key
from core.names import (
    INSTRUMENT_BY_SYMBOL_KEY,
    INSTRUMENT_META_KEY,
    INSTRUMENT_NAMES_KEY,
    INSTRUMENT_SEGMENTS_KEY,
    INSTRUMENT_SYMBOLS_KEY,
)

HEADER = (
    "SEM_EXM_EXCH_ID,SEM_SEGMENT,SEM_SMST_SECURITY_ID,SEM_INSTRUMENT_NAME,SEM_EXPIRY_CODE,"
    "SEM_TRADING_SYMBOL,SEM_LOT_UNITS,SEM_CUSTOM_SYMBOL,SEM_EXPIRY_DATE,SEM_STRIKE_PRICE,"
    "SEM_OPTION_TYPE,SEM_TICK_SIZE,SEM_EXPIRY_FLAG,SEM_EXCH_INSTRUMENT_TYPE,SEM_SERIES,"
    "SM_SYMBOL_NAME"
)
MIXED = [
    HEADER,
    "NSE,E,2885,EQUITY,0,RELIANCE,1.0,Reliance Industries,,,,5.0000,NA,ES,EQ,RELIANCE INDS LTD",
    "BSE,E,500325,EQUITY,0,RELIANCE,1.0,Reliance Industries,,,,5.0000,NA,ES,A,RELIANCE INDUSTRIES",
    "NSE,D,49081,FUTSTK,0,RELIANCE-Sep2026-FUT,500.0,RELIANCE SEP FUT,2026-09-29,,,10.0,M,FUT,,",
    "BSE,D,1100470,OPTIDX,0,SENSEX-Sep2026-68000-CE,20.0,SENSEX CE,2026-09-25,68000,CE,5.0,W,OP,,",
    "NSE,C,8830,FUTCUR,0,USDINR-Sep2026-FUT,1.0,USDINR FUT,2026-09-26,,,0.25,M,FUT,,",
    "BSE,C,9001,FUTCUR,0,EURINR-Sep2026-FUT,1.0,EURINR FUT,2026-09-26,,,0.25,M,FUT,,",
    "NSE,I,13,INDEX,0,NIFTY,1.0,Nifty 50,,,,0.0000,NA,INDEX,X,NIFTY",
    "BSE,I,51,INDEX,0,SENSEX,1.0,Sensex,,,,0.0000,NA,INDEX,X,SENSEX",
    "MCX,M,114,FUTCOM,0,GOLD-Oct2026-FUT,1.0,GOLD FUT,2026-10-05,,,1.0,M,FUT,,",
    'NSE,E,100,EQUITY,0,ARE&M,1.0,"Amara Raja, Energy",,,,5.0000,NA,ES,EQ,AMARA RAJA',
]


def lines(rows: list[str]) -> list[str]:
    return [row + "\n" for row in rows]


def test_every_exchange_and_segment_letter_maps_to_the_feed_segment() -> None:
    found = {str(i.key): i.symbol for i in im.parse_scrip_master(lines(MIXED))}
    assert found == {
        "NSE_EQ:2885": "RELIANCE",
        "BSE_EQ:500325": "RELIANCE",
        "NSE_FNO:49081": "RELIANCE-Sep2026-FUT",
        "BSE_FNO:1100470": "SENSEX-Sep2026-68000-CE",
        "NSE_CURRENCY:8830": "USDINR-Sep2026-FUT",
        "BSE_CURRENCY:9001": "EURINR-Sep2026-FUT",
        "IDX_I:13": "NIFTY",
        "IDX_I:51": "SENSEX",
        "MCX_COMM:114": "GOLD-Oct2026-FUT",
        "NSE_EQ:100": "ARE&M",
    }


def test_quoted_commas_survive_and_the_custom_symbol_is_the_display_name() -> None:
    by_key = {str(i.key): i for i in im.parse_scrip_master(lines(MIXED))}
    assert by_key["NSE_EQ:100"].name == "Amara Raja, Energy"
    assert by_key["NSE_EQ:2885"].name == "Reliance Industries"
    assert by_key["NSE_EQ:2885"].instrument == "EQUITY"


def test_rows_of_unknown_segments_or_bad_ids_are_skipped_and_counted() -> None:
    rows = [
        HEADER,
        "NSE,X,1,EQUITY,0,WHAT,1.0,What,,,,5.0,NA,ES,EQ,WHAT",
        "NYSE,E,2,EQUITY,0,IBM,1.0,IBM,,,,5.0,NA,ES,EQ,IBM",
        "NSE,E,ABC,EQUITY,0,BAD,1.0,Bad,,,,5.0,NA,ES,EQ,BAD",
        "NSE,E,5,EQUITY,0,,1.0,No symbol,,,,5.0,NA,ES,EQ,",
        "",
        "NSE,E,1333,EQUITY,0,HDFCBANK,1.0,HDFC Bank,,,,5.0,NA,ES,EQ,HDFC BANK LTD",
    ]
    stats = im.ParseStats()
    found = list(im.parse_scrip_master(lines(rows), stats=stats))
    assert [str(i.key) for i in found] == ["NSE_EQ:1333"]
    assert (stats.rows, stats.skipped) == (1, 4)


def test_a_segment_filter_keeps_only_those_segments() -> None:
    stats = im.ParseStats()
    found = im.parse_scrip_master(
        lines(MIXED), segments=frozenset({"IDX_I", "NSE_EQ"}), stats=stats
    )
    kept = sorted(str(i.key) for i in found)
    assert kept == ["IDX_I:13", "IDX_I:51", "NSE_EQ:100", "NSE_EQ:2885"]
    assert stats.skipped == 0


def test_the_detailed_layout_is_read_too() -> None:
    rows = [
        "EXCH_ID,SEGMENT,SECURITY_ID,ISIN,INSTRUMENT,UNDERLYING_SECURITY_ID,UNDERLYING_SYMBOL,"
        "SYMBOL_NAME,DISPLAY_NAME,INSTRUMENT_TYPE,SERIES,LOT_SIZE",
        "NSE,E,2885,INE002A01018,EQUITY,,RELIANCE,RELIANCE INDUSTRIES LTD,Reliance Industries,"
        "ES,EQ,1.0",
        "NSE,I,13,NA,INDEX,13,NIFTY,NIFTY 50,Nifty 50,INDEX,NA,1.0",
        "NSE,D,49081,NA,FUTSTK,2885,RELIANCE,RELIANCE-Sep2026-FUT,RELIANCE SEP FUT,FUT,NA,500",
    ]
    found = {str(i.key): (i.symbol, i.name) for i in im.parse_scrip_master(lines(rows))}
    assert found == {
        "NSE_EQ:2885": ("RELIANCE", "Reliance Industries"),
        "IDX_I:13": ("NIFTY", "Nifty 50"),
        "NSE_FNO:49081": ("RELIANCE-Sep2026-FUT", "RELIANCE SEP FUT"),
    }


def test_a_foreign_or_empty_file_is_refused_with_a_message() -> None:
    with pytest.raises(InstrumentMasterError, match="not a Dhan scrip-master CSV"):
        list(im.parse_scrip_master(["symbol,price\n", "RELIANCE,1\n"]))
    with pytest.raises(InstrumentMasterError, match="empty"):
        list(im.parse_scrip_master([]))


def test_the_shipped_sample_is_nifty_50_plus_two_indices() -> None:
    with im.open_source(im.SAMPLE_PATH) as source:
        found = list(im.parse_scrip_master(source))
    by_symbol = {i.symbol: str(i.key) for i in found}
    assert len(found) == 52
    assert sum(i.key.segment == "NSE_EQ" for i in found) == 50
    assert len({i.key for i in found}) == 52
    assert by_symbol["NIFTY"] == "IDX_I:13"
    assert by_symbol["BANKNIFTY"] == "IDX_I:25"
    expected = {"RELIANCE": 2885, "HDFCBANK": 1333, "TCS": 11536, "INFY": 1594, "ICICIBANK": 4963}
    for symbol, security_id in expected.items():
        assert by_symbol[symbol] == f"NSE_EQ:{security_id}"
    # The sample must also be readable by any plain CSV tool with the compact header.
    with open(im.SAMPLE_PATH, newline="") as handle:
        assert next(csv.reader(handle)) == HEADER.split(",")


def test_load_writes_symbols_names_reverse_lookup_and_meta(redis_client: redis.Redis) -> None:
    result = im.load_into_redis(im.parse_scrip_master(lines(MIXED)), redis=redis_client, source="t")
    assert result.rows == 10
    assert redis_client.hget(INSTRUMENT_SYMBOLS_KEY, "NSE_EQ:2885") == b"RELIANCE"
    assert redis_client.hget(INSTRUMENT_NAMES_KEY, "NSE_EQ:100") == b"Amara Raja, Energy"
    assert redis_client.hget(INSTRUMENT_BY_SYMBOL_KEY, "BSE_EQ:RELIANCE") == b"BSE_EQ:500325"
    assert redis_client.hget(INSTRUMENT_BY_SYMBOL_KEY, "IDX_I:NIFTY") == b"IDX_I:13"
    meta = redis_client.hgetall(INSTRUMENT_META_KEY)
    assert meta[b"source"] == b"t" and meta[b"rows"] == b"10" and meta[b"skipped"] == b"0"
    symbols = im.lookup_symbols(
        [InstrumentKey("NSE_EQ", "2885"), "IDX_I:13", "NSE_EQ:999999"], redis=redis_client
    )
    assert symbols == {"NSE_EQ:2885": "RELIANCE", "IDX_I:13": "NIFTY"}
    assert im.lookup_symbols([], redis=redis_client) == {}
    assert im.describe(["NSE_EQ:100", "NSE_EQ:999999"], redis=redis_client) == [
        {"key": "NSE_EQ:100", "symbol": "ARE&M", "name": "Amara Raja, Energy"},
        {"key": "NSE_EQ:999999", "symbol": "", "name": ""},
    ]
    assert im.describe([], redis=redis_client) == []


def test_a_reload_replaces_the_master_whole(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(im, "CHUNK_ROWS", 3)  # several pipelines per load
    im.load_into_redis(im.parse_scrip_master(lines(MIXED)), redis=redis_client, source="a")
    rows = [HEADER, "NSE,E,1333,EQUITY,0,HDFCBANK,1.0,HDFC Bank,,,,5.0,NA,ES,EQ,HDFC BANK"]
    im.load_into_redis(im.parse_scrip_master(lines(rows)), redis=redis_client, source="b")
    assert redis_client.hgetall(INSTRUMENT_SYMBOLS_KEY) == {b"NSE_EQ:1333": b"HDFCBANK"}
    assert redis_client.hgetall(INSTRUMENT_BY_SYMBOL_KEY) == {b"NSE_EQ:HDFCBANK": b"NSE_EQ:1333"}
    assert sorted(redis_client.keys("instruments:*")) == sorted(
        k.encode()
        for k in (
            INSTRUMENT_SYMBOLS_KEY,
            INSTRUMENT_NAMES_KEY,
            INSTRUMENT_BY_SYMBOL_KEY,
            INSTRUMENT_META_KEY,
            INSTRUMENT_SEGMENTS_KEY,
        )
    )
    # The segments of the new load only: the first load's others are gone with it.
    assert redis_client.smembers(INSTRUMENT_SEGMENTS_KEY) == {b"NSE_EQ"}


def test_the_first_row_of_a_symbol_wins_the_reverse_lookup(redis_client: redis.Redis) -> None:
    rows = [
        HEADER,
        "NSE,E,2885,EQUITY,0,RELIANCE,1.0,Reliance,,,,5.0,NA,ES,EQ,RELIANCE",
        "NSE,E,9999,EQUITY,0,RELIANCE,1.0,Reliance BE,,,,5.0,NA,ES,BE,RELIANCE",
    ]
    im.load_into_redis(im.parse_scrip_master(lines(rows)), redis=redis_client, source="x")
    assert redis_client.hget(INSTRUMENT_BY_SYMBOL_KEY, "NSE_EQ:RELIANCE") == b"NSE_EQ:2885"
    assert redis_client.hlen(INSTRUMENT_SYMBOLS_KEY) == 2


def test_a_load_that_fails_midway_leaves_the_old_master_and_no_debris(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    im.load_into_redis(im.parse_scrip_master(lines(MIXED)), redis=redis_client, source="old")
    monkeypatch.setattr(im, "CHUNK_ROWS", 2)

    def broken() -> Iterator[im.Instrument]:
        yield from im.parse_scrip_master(lines(MIXED[:6]))
        raise InstrumentMasterError("connection reset while downloading")

    with pytest.raises(InstrumentMasterError):
        im.load_into_redis(broken(), redis=redis_client, source="new")
    assert redis_client.hlen(INSTRUMENT_SYMBOLS_KEY) == 10
    assert redis_client.hget(INSTRUMENT_META_KEY, "source") == b"old"
    assert not redis_client.keys("*:loading:*")


def test_an_empty_master_clears_the_hashes(redis_client: redis.Redis) -> None:
    im.load_into_redis(im.parse_scrip_master(lines(MIXED)), redis=redis_client, source="old")
    result = im.load_into_redis(iter(()), redis=redis_client, source="none")
    assert result.rows == 0
    assert not redis_client.exists(INSTRUMENT_SYMBOLS_KEY, INSTRUMENT_BY_SYMBOL_KEY)
    assert redis_client.hget(INSTRUMENT_META_KEY, "rows") == b"0"


def test_load_master_reads_a_file_with_a_byte_order_mark(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "master.csv"
    path.write_text("\ufeff" + "\r\n".join(MIXED) + "\r\n", encoding="utf-8")
    result = im.load_master(path, redis=redis_client, segments=frozenset({"IDX_I"}))
    assert result.rows == 2
    assert redis_client.hgetall(INSTRUMENT_SYMBOLS_KEY) == {
        b"IDX_I:13": b"NIFTY",
        b"IDX_I:51": b"SENSEX",
    }


def test_a_missing_file_is_an_instrument_master_error(tmp_path: Path) -> None:
    with pytest.raises(InstrumentMasterError, match="cannot read"):
        with im.open_source(tmp_path / "nope.csv"):
            pass


class _CsvHandler(http.server.BaseHTTPRequestHandler):
    body = ("\n".join(MIXED) + "\n").encode()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path != "/api-scrip-master.csv":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/csv; charset=utf-8")
        self.end_headers()
        # Small writes without Content-Length: the client must cope with a chunked-ish stream.
        for start in range(0, len(self.body), 97):
            self.wfile.write(self.body[start : start + 97])
            self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def csv_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CsvHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_load_master_streams_from_a_url(redis_client: redis.Redis, csv_server: str) -> None:
    result = im.load_master(f"{csv_server}/api-scrip-master.csv", redis=redis_client)
    assert result.rows == 10
    assert redis_client.hget(INSTRUMENT_SYMBOLS_KEY, "MCX_COMM:114") == b"GOLD-Oct2026-FUT"


def test_an_http_error_names_the_status(redis_client: redis.Redis, csv_server: str) -> None:
    with pytest.raises(InstrumentMasterError, match="HTTP 404"):
        im.load_master(f"{csv_server}/missing.csv", redis=redis_client)
    assert not redis_client.exists(INSTRUMENT_SYMBOLS_KEY)


def test_an_unreachable_url_is_an_instrument_master_error(redis_client: redis.Redis) -> None:
    from local.redis_server import free_port

    with pytest.raises(InstrumentMasterError, match="cannot download"):
        im.load_master(f"http://127.0.0.1:{free_port()}/x.csv", redis=redis_client)


def test_the_command_line_loads_the_sample(
    redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert im.main(["--redis-url", redis_url]) == 0
    assert "loaded 52 instruments" in capsys.readouterr().out
    assert redis_client.hget(INSTRUMENT_SYMBOLS_KEY, str(parse_key("NSE_EQ:11536"))) == b"TCS"


def test_the_command_line_explains_failures(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert im.main([str(tmp_path / "nope.csv"), "--redis-url", redis_url]) == 1
    assert capsys.readouterr().err.startswith("ltp-instruments: cannot read")
    with pytest.raises(SystemExit):
        im.main(["--segments", "NASDAQ", "--redis-url", redis_url])
    assert "unknown segment(s) NASDAQ" in capsys.readouterr().err
