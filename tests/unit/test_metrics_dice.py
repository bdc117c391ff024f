"""Dice per image vs pooled (WSMIS BinaryF1) on hand-made 4x5 masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lesionsweep.metrics import DiceEvaluator, binary_f1_pooled, dice_per_image


def _mask(*pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros((4, 5), dtype=bool)
    for r, c in pixels:
        m[r, c] = True
    return m


GT = np.stack(
    [
        _mask((0, 0), (0, 1), (1, 0), (1, 1)),  # 4 px, predicted exactly
        _mask(),  # negative image, nothing predicted
        _mask((2, 2), (2, 3)),  # 2 px, prediction overlaps 1 and adds 1
        _mask((3, 0), (3, 1), (3, 2)),  # 3 px, nothing predicted
    ]
)
PRED = np.stack([GT[0], _mask(), _mask((2, 3), (2, 4)), _mask()])


def test_per_image_by_hand() -> None:
    np.testing.assert_allclose(dice_per_image(PRED, GT), [1.0, 1.0, 0.5, 0.0])


def test_pooled_by_hand() -> None:
    # TP = 4 + 1, FP = 1, FN = 1 + 3 -> 2*5 / (10 + 1 + 4)
    assert binary_f1_pooled(PRED, GT) == pytest.approx(10 / 15)


def test_false_positive_on_negative_image() -> None:
    pred = PRED.copy()
    pred[1, 3, 4] = True
    assert dice_per_image(pred, GT)[1] == 0.0
    assert binary_f1_pooled(pred, GT) == pytest.approx(10 / 16)


def test_all_empty_is_one() -> None:
    empty = np.zeros((2, 4, 5), bool)
    assert binary_f1_pooled(empty, empty) == 1.0


def test_evaluator_strict_threshold_and_batches() -> None:
    probs = PRED.astype(np.float64) * 0.9 + 0.05
    probs[1, 0, 0] = 0.5  # exactly the threshold: background
    ev = DiceEvaluator(threshold=0.5)
    ev.accumulate(probs[:2], GT[:2])
    ev.accumulate(probs[2:], GT[2:])
    r = ev.compute()
    assert r["dice_per_image"] == pytest.approx(0.625)
    assert r["dice_pooled"] == pytest.approx(10 / 15)
    ev.reset()
    assert math.isnan(ev.compute()["dice_pooled"])


def test_evaluator_rejects_nan_and_out_of_range() -> None:
    ev = DiceEvaluator()
    with pytest.raises(ValueError, match="Dice"):
        ev.accumulate(np.full((1, 4, 5), np.nan), GT[:1])
    with pytest.raises(ValueError, match="Dice"):
        ev.accumulate(np.full((1, 4, 5), 1.2), GT[:1])
