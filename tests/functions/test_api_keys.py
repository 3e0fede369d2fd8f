"""The request-key fast path (`core.instruments.is_canonical_batch`) agrees with `parse_keys`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidKeysError
from core.instruments import (
    SEGMENT_CODES,
    is_canonical_batch,
    is_canonical_csv,
    parse_keys,
    split_keys,
)
from functions.api.keys import canonical_keys, canonical_keys_from_csv
from functions.errors import Unprocessable

segments = st.sampled_from([*SEGMENT_CODES, "NSE", "nse_eq", "", "BSE_EQ "])
ids = st.one_of(
    st.integers(0, 2**32 + 5).map(str),
    st.integers(0, 999).map(lambda i: f"00{i}"),
    st.sampled_from(["", "12a", "-1", "1.5", "١٢", " 7", "99999999999"]),
)
key_texts = st.one_of(
    st.builds(lambda s, i: f"{s}:{i}", segments, ids),
    st.builds(lambda s, i: f"{s}:{i},{s}:{i}", segments, ids),
    st.text(max_size=12),
)
items = st.lists(st.one_of(key_texts, st.integers(), st.none()), max_size=30)


def reference(values: list[Any]) -> list[str] | dict[str, str]:
    try:
        return [str(key) for key in parse_keys(values)]
    except InvalidKeysError as exc:
        return exc.problems


def ours(values: list[Any]) -> list[str] | dict[str, str]:
    try:
        return canonical_keys(values)
    except Unprocessable as exc:
        return dict(exc.details["invalid_keys"])


@given(values=items)
def test_fast_path_equals_parse_keys_for_lists(values: list[Any]) -> None:
    assert ours(values) == reference(values)


@given(values=st.lists(key_texts, max_size=30))
def test_fast_path_equals_parse_keys_for_csv(values: list[str]) -> None:
    csv = ",".join(values)
    expected = reference(split_keys(csv))
    try:
        got: list[str] | dict[str, str] = canonical_keys_from_csv(csv)
    except Unprocessable as exc:
        got = dict(exc.details["invalid_keys"])
    assert got == expected


def test_a_comma_inside_one_list_item_is_not_two_keys() -> None:
    with pytest.raises(Unprocessable, match="NSE_EQ:1,NSE_EQ:2"):
        canonical_keys(["NSE_EQ:1,NSE_EQ:2"])


def test_many_bad_keys_are_summarised() -> None:
    with pytest.raises(Unprocessable) as raised:
        canonical_keys([f"BAD:{i}" for i in range(80)])
    assert "80 invalid" in raised.value.message
    assert "and 30 more" in raised.value.message
    assert len(raised.value.details["invalid_keys"]) == 50


@given(values=items)
def test_a_proven_canonical_batch_is_what_parse_keys_returns(values: list[Any]) -> None:
    # The fast check may decline valid input (ids 0 or of 10 digits, blanks), never accept
    # anything parse_keys would change or refuse.
    if is_canonical_batch(values):
        assert [str(key) for key in parse_keys(values)] == list(dict.fromkeys(values))


@given(values=st.lists(key_texts, max_size=30))
def test_a_proven_canonical_csv_is_what_parse_keys_returns(values: list[str]) -> None:
    csv = ",".join(values)
    if is_canonical_csv(csv):
        assert [str(key) for key in parse_keys(split_keys(csv))] == list(
            dict.fromkeys(csv.split(","))
        )


def test_the_fast_check_takes_the_usual_batch_and_declines_the_rest() -> None:
    assert is_canonical_batch([f"{segment}:1333" for segment in SEGMENT_CODES])
    assert is_canonical_batch(["NSE_EQ:999999999", "NSE_EQ:1333", "NSE_EQ:1333"])
    for declined in (["NSE_EQ:0"], ["NSE_EQ:1000000000"], [" NSE_EQ:1"], ["NSE_EQ:01"],
                     ["NSE_EQ:1,NSE_EQ:2"], [], ["NSE_EQ:1", 2]):  # fmt: skip
        assert not is_canonical_batch(declined), declined
    assert is_canonical_csv("NSE_EQ:1,IDX_I:13")
    for declined_csv in ("", "NSE_EQ:1,", ",NSE_EQ:1", "NSE_EQ:1,,IDX_I:13", "NSE_EQ:1 "):
        assert not is_canonical_csv(declined_csv), declined_csv


def test_duplicates_fold_in_first_seen_order_on_both_paths() -> None:
    assert canonical_keys(["NSE_EQ:2", "NSE_EQ:1", "NSE_EQ:2"]) == ["NSE_EQ:2", "NSE_EQ:1"]
    assert canonical_keys(["NSE_EQ:2", "NSE_EQ:01", "NSE_EQ:1"]) == ["NSE_EQ:2", "NSE_EQ:1"]
    assert canonical_keys_from_csv("NSE_EQ:2,NSE_EQ:1,NSE_EQ:2") == ["NSE_EQ:2", "NSE_EQ:1"]
