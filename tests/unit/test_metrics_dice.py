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
    # headline: lesion-positive maps 0, 2, 3 -> (1 + 0.5 + 0) / 3; every map: (1+1+0.5+0) / 4
    assert r["dice_per_image"] == pytest.approx(0.5)
    assert r["dice_per_image_with_empty"] == pytest.approx(0.625)
    assert r["dice_pooled"] == pytest.approx(10 / 15)
    ev.reset()
    assert math.isnan(ev.compute()["dice_pooled"])


def test_evaluator_rejects_nan_and_out_of_range() -> None:
    ev = DiceEvaluator()
    with pytest.raises(ValueError, match="Dice"):
        ev.accumulate(np.full((1, 4, 5), np.nan), GT[:1])
    with pytest.raises(ValueError, match="Dice"):
        ev.accumulate(np.full((1, 4, 5), 1.2), GT[:1])


def test_blank_map_cannot_win() -> None:
    """Issue 10.6: with many negatives, an all-empty prediction used to beat a trained one
    (every negative counted 1). Over lesion-positive maps it scores 0 and loses to any map that
    overlaps the lesions, while the empty-image convention still prefers it."""
    rng = np.random.default_rng(0)
    gt = np.zeros((20, 16, 16), dtype=bool)
    for i in range(4):  # 4 positives, 16 negatives
        gt[i, 4 + i : 10 + i, 3:9] = True
    trained = np.zeros(gt.shape)
    trained[:4] = gt[:4] * 0.9 + 0.05
    trained[:4, :, 9:11] = 0.8  # some false positive next to each lesion
    trained[4:] = rng.uniform(0.0, 0.3, (16, 16, 16))
    trained[4:8, 0:2, 0:2] = 0.9  # false positives on four negatives
    blank = np.zeros(gt.shape)
    scores = {}
    for name, probs in (("trained", trained), ("blank", blank)):
        ev = DiceEvaluator()
        ev.accumulate(probs, gt)
        scores[name] = ev.compute()
    assert scores["blank"]["dice_per_image"] == 0.0
    # each positive: 36 lesion px found, 32 px false positive -> 72 / 104
    assert scores["trained"]["dice_per_image"] == pytest.approx(72 / 104)
    # the old convention ranks the blank map first: 16 of 20 maps score 1
    assert scores["blank"]["dice_per_image_with_empty"] == pytest.approx(0.8)
    old_trained = scores["trained"]["dice_per_image_with_empty"]
    assert old_trained == pytest.approx((4 * 72 / 104 + 12) / 20)
    assert scores["blank"]["dice_per_image_with_empty"] > old_trained


def test_no_positive_map_is_nan() -> None:
    ev = DiceEvaluator()
    ev.accumulate(np.zeros((2, 4, 5)), np.zeros((2, 4, 5), bool))
    r = ev.compute()
    assert math.isnan(r["dice_per_image"]) and r["dice_per_image_with_empty"] == 1.0
