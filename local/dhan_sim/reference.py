"""Reference prices of the sample instruments: where the simulator's instruments start.

`data/nse_sample_prices.csv` (`key,symbol,reference`) holds a previous close per sample
instrument at roughly its late-2025 level (NIFTY near 25,900, RELIANCE near 1,550), so that a
local run looks like the market instead of random numbers between 50 and 5,000. The values
are approximate and only ever a starting point: the walk moves from there.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from local.dhan_sim.prices import Key

SAMPLE_PRICES_PATH = Path(__file__).resolve().parents[2] / "data" / "nse_sample_prices.csv"


def load_reference(path: Path = SAMPLE_PRICES_PATH) -> Mapping[Key, float]:
    """(segment, security id) -> reference price; a row that does not parse is an error."""
    reference: dict[Key, float] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            segment, _, security_id = (row.get("key") or "").partition(":")
            try:
                price = float(row.get("reference") or "")
            except ValueError:
                raise ValueError(f"{path}:{line}: reference is not a number") from None
            if not segment or not security_id or not price > 0:
                raise ValueError(f"{path}:{line}: need key SEGMENT:ID and a positive reference")
            reference[(segment, security_id)] = price
    return reference
