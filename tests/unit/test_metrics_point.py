"""PYLON point localization accuracy and its chance level."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lesionsweep.metrics import (
    MetricInputError,
    PointAccuracyEvaluator,
    argmax_points,
    points_in_boxes,
    random_point_chance,
)


def _onehot(row: int, col: int, h: int = 4, w: int = 5) -> np.ndarray:
    m = np.zeros((h, w))
    m[row, col] = 1.0
    return m


def test_argmax_first_on_ties() -> None:
    m = np.zeros((1, 4, 5))
    m[0, 1, 3] = m[0, 2, 0] = 5.0
    rows, cols = argmax_points(m)
    assert (rows.tolist(), cols.tolist()) == ([1], [3])


def test_inside_inclusive_boundaries() -> None:
    box = np.array([[1.0, 1.0, 3.0, 2.0]])
    rows = [2, 2, 0, 1, 1]
    cols = [3, 4, 1, 1, 0]
    hits = points_in_boxes(rows, cols, [box] * 5)
    # (2,3) corner: inside; col 4 > x1; row 0 < y0; (1,1) corner: inside; col 0 < x0
    assert hits.tolist() == [True, False, False, True, False]


def test_any_box_counts() -> None:
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [3.0, 2.0, 4.0, 3.0]])
    assert points_in_boxes([3], [4], [boxes]).tolist() == [True]


def test_micro_and_macro() -> None:
    ev = PointAccuracyEvaluator(("a", "b", "c"))
    box = np.array([[1.0, 1.0, 3.0, 2.0]])
    maps = np.stack([_onehot(1, 1), _onehot(2, 3), _onehot(1, 2), _onehot(0, 0)])
    ev.accumulate(maps[:2], [0, 0], [box, box])
    ev.accumulate(maps[2:], [0, 1], [box, box])
    r = ev.compute()
    assert r["point_acc/a"] == 1.0 and r["point_acc/b"] == 0.0
    assert math.isnan(r["point_acc/c"])
    assert r["point_acc_micro"] == 0.75
    assert r["point_acc_macro"] == 0.5
    assert r["point_acc_chance_micro"] == pytest.approx(6 / 20)
    assert r["point_acc_chance_macro"] == pytest.approx(6 / 20)


def test_chance_hand_values() -> None:
    boxes = [
        np.array([[1.0, 1.0, 3.0, 2.0]]),  # cols 1..3, rows 1..2 -> 6 px
        np.array([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0]]),  # 4 + 4 - 1 overlap -> 7 px
        np.array([[0.5, 0.5, 2.5, 1.5]]),  # cols 1..2, row 1 -> 2 px
        np.array([[3.5, 0.0, 3.9, 3.0]]),  # no integer column inside -> 0
    ]
    np.testing.assert_allclose(random_point_chance(boxes, 4, 5), [6 / 20, 7 / 20, 2 / 20, 0.0])


def test_chance_equals_accuracy_of_every_possible_point() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        xy = np.sort(rng.uniform(-1, 6, size=(2, 2)), axis=1)
        boxes = np.array([[xy[0, 0], xy[1, 0], xy[0, 1], xy[1, 1]]])
        rows, cols = np.divmod(np.arange(20), 5)
        hits = points_in_boxes(rows, cols, [boxes] * 20)
        assert random_point_chance([boxes], 4, 5)[0] == pytest.approx(hits.mean())


def test_bad_inputs() -> None:
    ev = PointAccuracyEvaluator(("a",))
    box = np.array([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="point accuracy"):
        ev.accumulate(np.full((1, 4, 5), np.nan), [0], [box])
    with pytest.raises(MetricInputError, match="at least one GT box"):
        ev.accumulate(np.zeros((1, 4, 5)), [0], [np.zeros((0, 4))])
    assert math.isnan(ev.compute()["point_acc_micro"])
