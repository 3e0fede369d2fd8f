"""The request-key fast path agrees with `core.instruments.parse_keys` on every input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidKeysError
from core.instruments import SEGMENT_CODES, parse_keys, split_keys
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
