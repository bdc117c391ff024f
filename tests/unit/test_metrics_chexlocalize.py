"""CheXlocalize hit rate / mIoU on hand-made 4x5 maps (golden values worked out by hand)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from lesionsweep.data.types import Batch, DatasetInfo
from lesionsweep.metrics import LocalizationSuite
from lesionsweep.metrics.chexlocalize import (
    TUNE_GRID,
    ChexlocalizeEvaluator,
    binarize_map,
    most_representative_point,
    otsu_segmentation,
)
from lesionsweep.metrics.common import MetricInputError


def _m(*pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros((4, 5), dtype=bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def test_point_is_first_maximum_row_major() -> None:
    a = np.zeros((4, 5))
    a[2, 1] = a[0, 4] = 3.0
    assert most_representative_point(a) == (0, 4)
    assert most_representative_point(np.ones((4, 5))) == (0, 0)


def test_otsu_as_chexlocalize_binarises() -> None:
    two = np.where(_m((1, 1), (1, 2), (2, 1), (2, 2)), 5.0, -1.0)
    np.testing.assert_array_equal(otsu_segmentation(two), two > 0)
    assert not otsu_segmentation(np.full((4, 5), 0.7)).any()  # constant map: empty
    # heatmap_to_segmentation.py: uint8(255 * minmax(m)) (truncating), cv2 Otsu with
    # maxval = max, "on" where the thresholded image is non-zero
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.gamma(2.0, 1.0, (23, 31)) + 4 * (rng.random((23, 31)) < 0.2)
        u8 = np.uint8(255 * ((m - m.min()) / (m - m.min()).max()))
        ref = cv2.threshold(u8, 0, int(u8.max()), cv2.THRESH_OTSU)[1] > 0
        np.testing.assert_array_equal(otsu_segmentation(m), ref)
    # a given threshold applies to the min-max normalised map, strictly
    ramp = np.arange(20, dtype=float).reshape(4, 5)  # normalised: k / 19
    assert int(binarize_map(ramp, 0.5).sum()) == 10  # 10/19 .. 19/19 > 0.5
    assert TUNE_GRID == pytest.approx((0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8))


def _pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four (map, GT) pairs of class 0 and one of class 1, with their IoUs by hand."""
    maps = np.zeros((5, 4, 5))
    gts = np.zeros((5, 4, 5), dtype=bool)
    # 0: GT 4 px (rows 1-2, cols 1-2); map high on cols 2-3 of rows 1-2 -> pred 4 px, overlap 2:
    #    IoU 2/6; peak (1, 2) inside GT -> hit
    gts[0] = _m((1, 1), (1, 2), (2, 1), (2, 2))
    maps[0, 1:3, 2:4] = 1.0
    # 1: negative (empty GT), map with a blob -> false positive: full-set IoU 0, not in TP slice,
    #    no hit rate entry
    maps[1, 0, 0] = 1.0
    # 2: GT 2 px at (3, 3), (3, 4); constant map -> empty prediction: full-set IoU 0, not in the
    #    TP slice; peak (0, 0) outside GT -> miss
    gts[2] = _m((3, 3), (3, 4))
    maps[2] = 0.25
    # 3: negative, constant map: empty prediction, empty GT -> scored nowhere
    maps[3] = -2.0
    # 4 (class 1): GT 3 px, map exactly on it -> IoU 1, hit
    gts[4] = _m((0, 0), (0, 1), (0, 2))
    maps[4, 0, 0:3] = 2.0
    return maps, gts, np.array([0, 0, 0, 0, 1])


def test_hit_rate_and_miou_by_hand() -> None:
    maps, gts, cls = _pairs()
    ev = ChexlocalizeEvaluator(["a", "b", "c"], [True, True, False])
    ev.accumulate(maps[:2], cls[:2], gts[:2], np.full(2, 0.9))
    ev.accumulate(maps[2:], cls[2:], gts[2:], np.full(3, 0.9))
    r = ev.compute()
    assert r["hit_rate/a"] == 0.5 and r["hit_rate/b"] == 1.0 and r["hit_rate"] == 0.75
    assert r["miou/a"] == pytest.approx(2 / 6) and r["miou/b"] == 1.0
    assert r["miou"] == pytest.approx((2 / 6 + 1) / 2)
    assert r["miou_full/a"] == pytest.approx((2 / 6 + 0 + 0) / 3)
    assert r["miou_full"] == pytest.approx(((2 / 6) / 3 + 1) / 2)
    assert "hit_rate/c" not in r and "miou/c" not in r  # not a localized class
    ev.reset()
    assert all(math.isnan(v) for v in ev.compute().values())


def test_thresholds_and_probability_cutoffs() -> None:
    maps, gts, cls = _pairs()
    maps[0, 1, 1] = 0.4  # GT pixel (1, 1) at 0.4: on for t = 0.3, off under Otsu / t = 0.5
    ev = ChexlocalizeEvaluator(["a", "b"], thresholds={"a": 0.3})
    ev.accumulate(maps, cls, gts, np.full(5, 0.9))
    assert ev.compute()["miou/a"] == pytest.approx(3 / 6)  # pred 5 px, overlap 3, union 6
    # a cut-off above the probability empties the segmentation: out of the TP slice, 0 in the
    # full set; hit rate is unaffected (it never looks at the segmentation)
    ev = ChexlocalizeEvaluator(["a", "b"], prob_cutoffs={"b": 0.95})
    ev.accumulate(maps, cls, gts, np.full(5, 0.9))
    r = ev.compute()
    assert math.isnan(r["miou/b"]) and r["miou_full/b"] == 0.0 and r["hit_rate/b"] == 1.0
    with pytest.raises(MetricInputError, match=r"unknown or unlocalized class\(es\) \['z'\]"):
        ChexlocalizeEvaluator(["a"], thresholds={"z": 0.5})
    with pytest.raises(MetricInputError, match=r"must be in \[0, 1\]"):
        ChexlocalizeEvaluator(["a"], prob_cutoffs={"a": 2.0})


def test_threshold_tuning_picks_the_best_grid_value() -> None:
    gt = _m((1, 1), (1, 2), (2, 1), (2, 2))
    # class a: GT at 0.6 (one pixel 1.0), a ring of 0.45 next to it: t <= 0.4 adds the ring
    # (IoU 4/6), t = 0.5 gives exactly the GT (IoU 1), t >= 0.6 only the 1.0 pixel (IoU 1/4)
    a = np.where(gt, 0.6, 0.0)
    a[1, 1] = 1.0
    a[1, 3] = a[2, 3] = 0.45
    # class b: GT at 0.3, a 1.0 peak outside: t = 0.2 -> GT + peak (IoU 4/5), higher -> 0
    b = np.where(gt, 0.3, 0.0)
    b[3, 4] = 1.0
    ev = ChexlocalizeEvaluator(["a", "b"])
    ev.accumulate(np.stack([a, b]), np.array([0, 1]), np.stack([gt, gt]), np.ones(2))
    assert ev.tuned_thresholds() == {"a": 0.5, "b": 0.2}
    np.testing.assert_allclose(
        ev.grid_sum[0] / ev.grid_n[0], [4 / 6] * 3 + [1, 1 / 4, 1 / 4, 1 / 4]
    )


def _info(loc: tuple[str, ...] | None) -> DatasetInfo:
    return DatasetInfo("chexpert", ("Edema", "Pneumonia"), True, True, 8, loc_classes=loc)


def test_suite_registers_chexlocalize_for_localized_classes() -> None:
    masks = torch.zeros((2, 2, 8, 8), dtype=torch.bool)
    masks[0, 0, 2:5, 2:5] = True
    batch = Batch(
        images=torch.zeros((2, 1, 8, 8), dtype=torch.uint8),
        targets=torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
        target_mask=torch.ones((2, 2)),
        boxes=[torch.tensor([[0.0, 2.0, 2.0, 5.0, 5.0]]), torch.zeros((0, 5))],
        masks=masks,
        ids=["x", "y"],
    )
    maps = torch.zeros((2, 2, 4, 4))
    maps[0, 0, 1, 1] = 5.0  # 4x4 -> 8x8 bilinear: the peak lands inside the 3x3 lesion
    suite = LocalizationSuite(_info(("Edema",)), image_size=8)
    keys = set(suite.compute())
    suite.accumulate(torch.zeros((2, 2)), maps, batch, "logits")
    r = suite.compute()
    assert set(r) == keys
    assert {"hit_rate", "hit_rate/Edema", "miou", "miou/Edema", "miou_full"} <= keys
    assert not any(
        k.endswith("/Pneumonia") for k in keys if k.split("/")[0] in ("hit_rate", "miou")
    )
    assert r["hit_rate"] == 1.0 and 0.0 < r["miou"] <= 1.0
    assert set(suite.tuned_thresholds()) == {"Edema"}
    # loc_classes None: every class is localized
    assert "hit_rate/Pneumonia" in LocalizationSuite(_info(None), image_size=8).compute()
