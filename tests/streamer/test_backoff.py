from __future__ import annotations

import random

import pytest

from core.backoff import Backoff


def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(7)
    backoff = Backoff(base=0.5, cap=8.0, rng=rng.random)
    ceilings = []
    for _ in range(12):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert ceilings[-1] == 8.0


def test_jitter_covers_the_range() -> None:
    low = Backoff(base=1, cap=4, rng=lambda: 0.0)
    high = Backoff(base=1, cap=4, rng=lambda: 1.0)
    assert [low.next_delay() for _ in range(4)] == [0.0] * 4
    assert [high.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]


def test_long_failures_add_a_floor() -> None:
    backoff = Backoff(base=1, cap=4, long_floor=10, rng=lambda: 0.5)
    assert backoff.next_delay(long=True) == 10.5
    assert backoff.next_delay(long=True) == 11.0
    assert backoff.next_delay() == 2.0


def test_resets_after_a_healthy_period() -> None:
    backoff = Backoff(base=1, cap=100, healthy_after=60, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(3)] == [1, 2, 4]
    assert backoff.next_delay(healthy_for=59.0) == 8
    assert backoff.next_delay(healthy_for=60.0) == 1
    assert backoff.next_delay() == 2
    backoff.reset()
    assert backoff.next_delay() == 1


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(base=1, cap=30, rng=lambda: 1.0)
    for _ in range(5_000):
        assert backoff.next_delay() <= 30


def test_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError):
        Backoff(base=-1)
