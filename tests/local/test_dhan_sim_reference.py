"""The simulator looks like the market: the sample's instruments start near their reference
prices, with that reference as the previous close, and the day's fields stay consistent."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from core.instrument_master import SAMPLE_PATH
from local.dhan_sim.prices import PriceBook
from local.dhan_sim.reference import load_reference


def sample_keys() -> set[tuple[str, str]]:
    segments = {"I": "IDX_I", "E": "NSE_EQ"}
    rows = SAMPLE_PATH.read_text().splitlines()[1:]
    return {(segments[r.split(",")[1]], r.split(",")[2]) for r in rows}


def test_every_sample_instrument_has_a_reference_and_starts_near_it() -> None:
    reference = load_reference()
    assert set(reference) == sample_keys()
    book = PriceBook(seed=1, reference=reference)
    nifty = book.ensure(("IDX_I", "13"))
    assert nifty.prev_close == 25_900.0
    assert abs(nifty.price - 25_900.0) <= 25_900.0 * 0.01
    for key, price in reference.items():
        state = book.ensure(key)
        assert state.prev_close == pytest.approx(price, abs=0.05)
        assert abs(state.price / price - 1) <= 0.0101, key


def test_an_instrument_without_a_reference_keeps_its_seeded_start() -> None:
    plain, referenced = PriceBook(seed=3), PriceBook(seed=3, reference=load_reference())
    key = ("NSE_EQ", "990001")
    assert referenced.ensure(key) == plain.ensure(key)


def test_quote_fields_stay_consistent_over_a_long_walk() -> None:
    book = PriceBook(seed=5, reference=load_reference())
    rng = random.Random(5)
    key = ("NSE_EQ", "2885")
    volume = 0
    for _ in range(20_000):
        state = book.step(key, rng)
        assert state.low <= state.price <= state.high
        assert state.volume >= volume
        volume = state.volume
    assert state.low < state.prev_close * 1.05 and state.high > state.prev_close * 0.95


def test_a_broken_reference_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "prices.csv"
    bad.write_text("key,symbol,reference\nNSE_EQ:1,X,abc\n")
    with pytest.raises(ValueError, match="prices.csv:2: reference is not a number"):
        load_reference(bad)
    bad.write_text("key,symbol,reference\nNSE_EQ,X,10\n")
    with pytest.raises(ValueError, match="need key SEGMENT:ID"):
        load_reference(bad)
