from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidKeyError, InvalidKeysError
from core.instruments import (
    SEGMENT_CODES,
    SEGMENT_NAMES,
    InstrumentKey,
    parse_key,
    parse_keys,
    split_keys,
)
from core.names import ltp_key


def test_parses_a_key_and_builds_its_redis_name() -> None:
    key = parse_key(" NSE_EQ:1333 ")
    assert key == InstrumentKey("NSE_EQ", "1333")
    assert str(key) == "NSE_EQ:1333"
    assert key.segment_code == 1
    assert ltp_key(key) == "ltp:NSE_EQ:1333"


def test_segment_codes_match_the_feed_annexure() -> None:
    assert SEGMENT_CODES == {
        "IDX_I": 0, "NSE_EQ": 1, "NSE_FNO": 2, "NSE_CURRENCY": 3,
        "BSE_EQ": 4, "MCX_COMM": 5, "BSE_CURRENCY": 7, "BSE_FNO": 8,
    }
    assert 6 not in SEGMENT_NAMES
    assert InstrumentKey.from_feed(0, 13) == InstrumentKey("IDX_I", "13")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("NSE_EQ1333", "expected SEGMENT:SECURITY_ID"),
        ("NSE:1333", "unknown segment"),
        ("nse_eq:1333", "unknown segment"),
        ("NSE_EQ:", "all digits"),
        ("NSE_EQ:12a", "all digits"),
        ("NSE_EQ:-5", "all digits"),
        ("NSE_EQ:１２", "all digits"),  # full-width digits pass str.isdigit but not the feed
        ("NSE_EQ:4294967296", "out of range"),
        ("NSE_EQ:" + "1" * 40, "too long"),
    ],
)
def test_rejects_bad_keys_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidKeyError, match=reason):
        parse_key(text)


def test_leading_zeros_fold_to_one_canonical_key() -> None:
    assert parse_key("NSE_EQ:001333") == parse_key("NSE_EQ:1333")


def test_parse_keys_folds_duplicates_in_order() -> None:
    keys = parse_keys(["NSE_EQ:2885", "NSE_EQ:1333", "NSE_EQ:2885", "IDX_I:13"])
    assert [str(k) for k in keys] == ["NSE_EQ:2885", "NSE_EQ:1333", "IDX_I:13"]


def test_parse_keys_names_every_bad_key() -> None:
    with pytest.raises(InvalidKeysError) as info:
        parse_keys(["NSE_EQ:1", "BAD", "NSE_EQ:x", "NSE_EQ:2"])
    assert set(info.value.problems) == {"BAD", "NSE_EQ:x"}
    assert "'BAD'" in str(info.value) and "'NSE_EQ:x'" in str(info.value)


def test_non_string_keys_are_rejected_not_crashed() -> None:
    with pytest.raises(InvalidKeysError):
        parse_keys([1333])  # type: ignore[list-item]


def test_split_keys_drops_blanks() -> None:
    assert split_keys(" NSE_EQ:1, ,IDX_I:13,,") == ["NSE_EQ:1", "IDX_I:13"]


@given(st.sampled_from(sorted(SEGMENT_CODES)), st.integers(0, 2**32 - 1))
def test_every_valid_key_round_trips(segment: str, number: int) -> None:
    key = parse_key(f"{segment}:{number}")
    assert parse_key(str(key)) == key
    assert InstrumentKey.from_feed(key.segment_code, number) == key


@given(st.text(max_size=40))
def test_arbitrary_text_is_parsed_or_rejected_cleanly(text: str) -> None:
    try:
        key = parse_key(text)
    except InvalidKeyError:
        return
    assert key.segment in SEGMENT_CODES and key.security_id.isdigit()
