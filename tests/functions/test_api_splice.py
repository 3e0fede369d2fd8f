"""The all-cached fast path of the prices answer agrees with reading the values one by one."""

from __future__ import annotations

import math

import orjson
from hypothesis import given
from hypothesis import strategies as st

from core.messages import format_price, parse_price
from functions.api.prices import is_json_number, splice_prices

numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(format_price),
    st.integers(-(10**20), 10**20).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
)
junk = st.one_of(
    st.sampled_from(["", " 1.5", "1.5 ", "01", "1.", ".5", "+1", "1e", "1e400", "nan", "inf",
                     "-inf", "true", "null", '"1"', "[1]", "1,2", "1.5.2", "0x10", "1_000"]),
    st.text(alphabet="0123456789.eE+-, ", max_size=8),
)  # fmt: skip
values = st.lists(st.one_of(numbers, junk).map(str.encode), min_size=1, max_size=40)


def one_by_one(texts: list[bytes]) -> dict[str, float] | None:
    """Every value parsed alone; None when one of them is not a JSON number."""
    prices = {}
    for index, text in enumerate(texts):
        if not is_json_number(text):
            return None
        prices[f"NSE_EQ:{index + 1}"] = orjson.loads(text)
    return prices


@given(texts=values)
def test_splice_is_valid_json_equal_to_the_values_read_one_by_one(texts: list[bytes]) -> None:
    keys = [f"NSE_EQ:{index + 1}" for index in range(len(texts))]
    spliced = splice_prices(keys, texts)
    expected = one_by_one(texts)
    if expected is None:
        assert spliced is None
    else:
        assert spliced is not None
        assert orjson.loads(spliced) == expected


@given(text=st.one_of(numbers, junk).map(str.encode))
def test_a_json_number_is_a_finite_price(text: bytes) -> None:
    if is_json_number(text):
        price = parse_price(text)
        assert price is not None and math.isfinite(price)
        assert float(orjson.loads(text)) == price  # an integer beyond 2**53 stays exact in JSON


def test_a_miss_or_text_declines_the_fast_path() -> None:
    assert splice_prices(["NSE_EQ:1"], [None]) is None
    assert splice_prices(["NSE_EQ:1"], ["1.5"]) is None  # a client decoding to str
    spliced = splice_prices(["NSE_EQ:1", "NSE_EQ:2"], [b"1.5", b"2"])
    assert spliced == b'{"NSE_EQ:1":1.5,"NSE_EQ:2":2}'
