"""The one "is this better" comparison every ranking uses."""

from __future__ import annotations

import math

from lesionsweep.ranking import best_index, is_better, order_sign


def test_is_better_modes_and_non_finite_values() -> None:
    assert is_better(0.5, 0.4, "max") and not is_better(0.5, 0.4, "min")
    assert not is_better(0.4, 0.4, "max")  # ties keep the first
    assert is_better(0.1, None, "min") and is_better(0.1, math.nan, "max")
    for bad in (None, math.nan, math.inf, -math.inf):
        assert not is_better(bad, 0.0, "max") and not is_better(bad, None, "min")


def test_best_index_and_order_sign() -> None:
    assert best_index([0.2, math.nan, 0.9, 0.9, 0.1], "max") == 2
    assert best_index([0.2, math.nan, 0.9, 0.1], "min") == 3
    assert best_index([math.nan, None], "max") == 1  # nothing finite: the last
    vals = [0.3, 0.9, 0.1]
    assert sorted(vals, key=lambda v: order_sign("max") * v)[0] == 0.9
    assert sorted(vals, key=lambda v: order_sign("min") * v)[0] == 0.1
