"""NIH (Wang et al. 2017) T(IoBB)/T(IoU) box accuracy and AFP on hand-made 4x5 maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lesionsweep.metrics import (
    MetricInputError,
    NihBoxEvaluator,
    box_iou_iobb,
    nih_boxes_from_heatmap,
)

# already on the [0, 255] scale (min 0, max 255), so normalisation is the identity
MAP = np.array(
    [
        [0, 0, 0, 100, 60],
        [0, 100, 100, 0, 0],
        [0, 100, 255, 0, 70],
        [0, 0, 0, 0, 70],
    ],
    dtype=np.float64,
)
# level 60 (strict >): A = {(0,3),(1,1),(1,2),(2,1),(2,2)} joined diagonally -> cols 1..3 rows 0..2
#                      B = {(2,4),(3,4)}; the pixel equal to 60 is background.
# level 180: C = {(2,2)}
A, B, C = (1.0, 0.0, 4.0, 3.0), (4.0, 2.0, 5.0, 4.0), (2.0, 2.0, 3.0, 3.0)


def _as_set(boxes: np.ndarray) -> set[tuple[float, ...]]:
    return set(map(tuple, boxes.tolist()))


def test_boxes_two_levels_eight_connected_strict() -> None:
    boxes = nih_boxes_from_heatmap(MAP)
    assert _as_set(boxes[60]) == {A, B}
    assert _as_set(boxes[180]) == {C}


def test_boxes_invariant_to_affine_rescaling() -> None:
    boxes = nih_boxes_from_heatmap(MAP * 0.01 - 3.0)
    assert _as_set(boxes[60]) == {A, B}
    assert _as_set(boxes[180]) == {C}


def test_constant_map_has_no_boxes_and_nan_raises() -> None:
    boxes = nih_boxes_from_heatmap(np.full((4, 5), 7.0))
    assert boxes[60].shape == (0, 4) and boxes[180].shape == (0, 4)
    with pytest.raises(ValueError, match="NIH"):
        nih_boxes_from_heatmap(np.where(MAP > 200, np.nan, MAP))


def test_iou_iobb_hand() -> None:
    iou, iobb = box_iou_iobb([[0, 0, 4, 4]], [[2, 2, 6, 6], [10, 10, 11, 11]])
    np.testing.assert_allclose(iou, [[4 / 28, 0.0]])
    np.testing.assert_allclose(iobb, [[4 / 16, 0.0]])


def test_evaluator_hand_computed() -> None:
    names = ("a", "b", "c")
    ev = NihBoxEvaluator(names)
    gt = np.array([[1.0, 0.0, 3.0, 3.0]])  # area 6
    # vs GT: A IoBB 6/9, IoU 6/9; B no overlap; C IoBB 1, IoU 1/6
    ev.accumulate(np.stack([MAP, np.full((4, 5), 2.0)]), [0, 1], [gt, gt])
    r = ev.compute()
    for t in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert r[f"iobb@{t:g}/a"] == 1.0  # C has IoBB 1 > T
        assert r[f"iobb@{t:g}/b"] == 0.0  # constant map: no box
        assert math.isnan(r[f"iobb@{t:g}/c"])  # no GT of class c
        assert r[f"iobb@{t:g}"] == 0.5
    for t, found in [(0.1, 1), (0.2, 1), (0.3, 1), (0.4, 1), (0.5, 1), (0.6, 1), (0.7, 0)]:
        assert r[f"iou@{t:g}/a"] == found
    # false positives: B never overlaps (afp); at T(IoBB) A (6/9) is a FP for T >= .75
    assert r["afp/a"] == 1.0 and r["afp/b"] == 0.0 and r["afp"] == 0.5
    assert [r[f"afp@{t:g}/a"] for t in (0.1, 0.25, 0.5, 0.75, 0.9)] == [1, 1, 1, 2, 2]
    # per level: 60 has A, B (IoBB 6/9); 180 has C (IoBB 1, IoU 1/6)
    assert [r[f"iobb_t60@{t:g}"] for t in (0.1, 0.5, 0.75)] == [0.5, 0.5, 0.0]
    assert [r[f"iobb_t180@{t:g}"] for t in (0.1, 0.9)] == [0.5, 0.5]
    assert [r[f"iou_t180@{t:g}"] for t in (0.1, 0.2)] == [0.5, 0.0]
    assert r["afp_t60"] == 0.5 and r["afp_t180"] == 0.0
    assert r["nih_num_boxes"] == 2.0


def test_thresholds_are_strict() -> None:
    hm = np.zeros((4, 5))
    hm[0, 0:2] = 1.0  # one region -> box (0, 0, 2, 1), area 2
    ev = NihBoxEvaluator(("a",))
    ev.accumulate(hm[None], [0], [np.array([[1.0, 0.0, 3.0, 1.0]])])  # inter 1: IoBB .5, IoU 1/3
    r = ev.compute()
    assert (r["iobb@0.25"], r["iobb@0.5"]) == (1.0, 0.0)
    assert (r["iou@0.3"], r["iou@0.4"]) == (1.0, 0.0)


def test_multiple_gt_boxes_counted_each() -> None:
    ev = NihBoxEvaluator(("a",))
    gts = np.array([[2.0, 2.0, 3.0, 3.0], [0.0, 3.0, 1.0, 4.0]])  # second is far from any box
    ev.accumulate(MAP[None], [0], [gts])
    assert ev.compute()["iobb@0.9"] == 0.5


def test_empty_evaluator_and_bad_inputs() -> None:
    ev = NihBoxEvaluator(("a", "b"))
    r = ev.compute()
    assert math.isnan(r["iobb@0.1"]) and math.isnan(r["afp"])
    with pytest.raises(MetricInputError, match="class indices"):
        ev.accumulate(MAP[None], [2], [np.array([[0.0, 0.0, 1.0, 1.0]])])
    with pytest.raises(MetricInputError, match="at least one GT box"):
        ev.accumulate(MAP[None], [0], [np.zeros((0, 4))])
    with pytest.raises(MetricInputError, match="finite"):
        ev.accumulate(np.full((1, 4, 5), np.inf), [0], [np.array([[0.0, 0.0, 1.0, 1.0]])])
