"""LocalizationSuite end to end on tiny batches (boxes dataset and masks dataset)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lesionsweep.data.types import Batch, DatasetInfo
from lesionsweep.metrics import (
    LocalizationSuite,
    MaxBoxAccV2Evaluator,
    MetricInputError,
    NihBoxEvaluator,
    PointAccuracyEvaluator,
    boxes_to_wsol_convention,
    prepare_scoremaps,
)

S = 16
BOX_INFO = DatasetInfo("tiny-boxes", ("a", "b"), has_boxes=True, has_masks=False, image_size=S)
MASK_INFO = DatasetInfo("tiny-masks", ("a",), has_boxes=False, has_masks=True, image_size=S)


def _box_batch() -> Batch:
    boxes = [
        torch.tensor([[0, 4, 4, 8, 8]], dtype=torch.float32),
        torch.tensor([[1, 8, 2, 12, 6], [0, 0, 10, 4, 14]], dtype=torch.float32),
        torch.zeros((0, 5)),
    ]
    return Batch(
        images=torch.zeros((3, 1, S, S), dtype=torch.uint8),
        targets=torch.tensor([[1, 0], [1, 1], [0, 0]], dtype=torch.float32),
        target_mask=torch.ones((3, 2)),
        boxes=boxes,
        masks=None,
        ids=["i0", "i1", "i2"],
    )


def _indicator_logits(batch: Batch, k: int) -> torch.Tensor:
    """Full-resolution logits: +5 inside each GT box of the class, -5 elsewhere."""
    maps = torch.full((len(batch), k, S, S), -5.0)
    for i, boxes in enumerate(batch.boxes):
        for c, x0, y0, x1, y1 in boxes.long().tolist():
            maps[i, c, y0:y1, x0:x1] = 5.0
    return maps


def test_perfect_maps_score_perfectly() -> None:
    batch = _box_batch()
    suite = LocalizationSuite(BOX_INFO, image_size=S)
    logits = torch.tensor([[3.0, -1.0], [2.0, 4.0], [-2.0, -3.0]])
    suite.accumulate(logits, _indicator_logits(batch, 2), batch, "logits")
    r = suite.compute()
    assert r["auroc_macro"] == 1.0 and r["auroc_micro"] == 1.0
    assert r["point_acc_micro"] == 1.0 and r["point_acc_macro"] == 1.0
    assert r["point_acc_chance_micro"] == pytest.approx((25 + 25 + 25) / 3 / 256)
    for t in ("0.1", "0.25", "0.5", "0.75", "0.9"):
        assert r[f"iobb@{t}"] == 1.0
    assert r["iou@0.7"] == 1.0 and r["afp"] == 0.0
    assert r["maxboxacc@70"] == 1.0 and r["maxboxacc_v2"] == 1.0
    assert "pxap" not in r and "dice_pooled" not in r


def test_suite_equals_evaluators_on_upsampled_maps() -> None:
    torch.manual_seed(0)
    batch = _box_batch()
    maps = torch.randn(3, 2, 4, 4) * 3
    suite = LocalizationSuite(BOX_INFO, image_size=S, cam_curve_interval=0.05)
    suite.accumulate(torch.randn(3, 2), maps, batch, "logits")
    r = suite.compute()
    pairs = [(0, 0), (1, 0), (1, 1)]  # (image, class) pairs with boxes, in suite order
    gts = [
        np.array([[4.0, 4, 8, 8]]),
        np.array([[0.0, 10, 4, 14]]),
        np.array([[8.0, 2, 12, 6]]),
    ]
    sel = torch.stack([maps[i, c] for i, c in pairs])
    up_raw = F.interpolate(sel[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    up_prob = F.interpolate(
        torch.sigmoid(sel)[:, None], size=(S, S), mode="bilinear", align_corners=False
    )[:, 0]
    cls = [c for _, c in pairs]
    nih, point, mb = NihBoxEvaluator(("a", "b")), PointAccuracyEvaluator(("a", "b")), None
    nih.accumulate(up_raw.numpy(), cls, gts)
    point.accumulate(up_prob.numpy(), cls, gts)
    mb = MaxBoxAccV2Evaluator(cam_curve_interval=0.05)
    mb.accumulate(
        prepare_scoremaps(sel.numpy(), (S, S)), [boxes_to_wsol_convention(g, S, S) for g in gts]
    )
    expected = {**nih.compute(), **point.compute(), **mb.compute()}
    for key, v in expected.items():
        assert r[key] == pytest.approx(v, nan_ok=True), key


def test_key_set_depends_only_on_info_and_nan_when_empty() -> None:
    suite = LocalizationSuite(BOX_INFO, image_size=S)
    empty = suite.compute()
    suite.accumulate(torch.randn(3, 2), torch.randn(3, 2, 4, 4), _box_batch(), "logits")
    full = suite.compute()
    assert set(empty) == set(full)
    assert math.isnan(empty["point_acc_micro"]) and math.isnan(empty["maxboxacc_v2"])
    assert all(isinstance(v, float) for v in full.values())
    for key in ("auroc/a", "point_acc/b", "iobb@0.1/a", "iou@0.7", "afp", "maxboxacc@30"):
        assert key in full
    suite.reset()
    assert math.isnan(suite.compute()["iobb@0.1"])


def _mask_batch() -> Batch:
    masks = torch.zeros((3, 1, S, S), dtype=torch.bool)
    masks[0, 0, 2:6, 4:10] = True
    masks[1, 0, 10:14, 10:16] = True  # image 2 is negative: empty mask
    return Batch(
        images=torch.zeros((3, 1, S, S), dtype=torch.uint8),
        targets=torch.tensor([[1.0], [1.0], [0.0]]),
        target_mask=torch.ones((3, 1)),
        boxes=[torch.zeros((0, 5))] * 3,
        masks=masks,
        ids=["m0", "m1", "m2"],
    )


def test_masks_perfect_and_negative_false_positive() -> None:
    batch = _mask_batch()
    assert batch.masks is not None
    probs = batch.masks.float() * 0.8 + 0.1
    suite = LocalizationSuite(MASK_INFO, image_size=S)
    suite.accumulate(torch.tensor([[2.0], [1.0], [-1.0]]), probs, batch, "probabilities")
    r = suite.compute()
    assert r["dice_pooled"] == 1.0 and r["dice_per_image"] == 1.0 and r["pxap"] == 1.0
    assert "point_acc_micro" not in r and "maxboxacc_v2" not in r

    # a 4-pixel false positive on the negative image: per-image Dice of that image drops to 0
    # (only the empty-image convention sees it; the headline averages the two positives),
    # pooled Dice counts it (TP 48, FP 4); PxAP only sees the two GT-positive maps
    probs[2, 0, 0:2, 0:2] = 0.9
    suite.reset()
    suite.accumulate(torch.tensor([[2.0], [1.0], [-1.0]]), probs, batch, "normalized")
    r = suite.compute()
    assert r["dice_per_image"] == 1.0
    assert r["dice_per_image_with_empty"] == pytest.approx(2 / 3)
    assert r["dice_pooled"] == pytest.approx(96 / 100)
    assert r["pxap"] == 1.0


def test_logit_maps_are_upsampled_and_sigmoided_for_dice() -> None:
    batch = _mask_batch()
    assert batch.masks is not None
    low = F.avg_pool2d(batch.masks.float(), 2) * 20 - 10  # 8x8 logits
    suite = LocalizationSuite(MASK_INFO, image_size=S)
    suite.accumulate(torch.zeros(3, 1), low, batch, "logits")
    r = suite.compute()
    assert r["dice_per_image"] == pytest.approx(1.0)
    assert r["pxap"] > 0.9
    # logit 0.3 inside: sigmoid(0.3) = 0.57 > 0.5 is foreground (0.3 itself would not be)
    suite.reset()
    suite.accumulate(torch.zeros(3, 1), batch.masks.float() * 10.3 - 10, batch, "logits")
    assert suite.compute()["dice_pooled"] == 1.0


def test_bad_inputs_raise_named_errors() -> None:
    batch = _box_batch()
    suite = LocalizationSuite(BOX_INFO, image_size=S)
    maps = torch.randn(3, 2, 4, 4)
    with pytest.raises(MetricInputError, match="map_kind"):
        suite.accumulate(torch.randn(3, 2), maps, batch, "heatmap")
    bad = maps.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(MetricInputError, match="NaN"):
        suite.accumulate(torch.randn(3, 2), bad, batch, "logits")
    with pytest.raises(MetricInputError, match=r"\[0, 1\]"):
        suite.accumulate(torch.randn(3, 2), maps, batch, "probabilities")
    with pytest.raises(MetricInputError, match="logits must be"):
        suite.accumulate(torch.randn(3, 3), maps, batch, "logits")
    with pytest.raises(MetricInputError, match="image_size"):
        LocalizationSuite(BOX_INFO, image_size=32).accumulate(
            torch.randn(3, 2), maps, batch, "logits"
        )
    batch.boxes[0] = torch.tensor([[5.0, 0, 0, 1, 1]])
    with pytest.raises(MetricInputError, match="class indices"):
        suite.accumulate(torch.randn(3, 2), maps, batch, "logits")
    mask_batch = _mask_batch()
    mask_batch.masks = None
    with pytest.raises(MetricInputError, match="has masks"):
        LocalizationSuite(MASK_INFO, image_size=S).accumulate(
            torch.zeros(3, 1), torch.zeros(3, 1, 4, 4), mask_batch, "logits"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    batch = _box_batch()
    maps, logits = torch.randn(3, 2, 4, 4) * 3, torch.randn(3, 2)
    cpu = LocalizationSuite(BOX_INFO, image_size=S)
    cpu.accumulate(logits, maps, batch, "logits")
    gpu = LocalizationSuite(BOX_INFO, image_size=S)
    gpu.accumulate(logits.cuda(), maps.cuda(), batch, "logits")
    a, b = cpu.compute(), gpu.compute()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True, abs=1e-6), key


def test_point_accuracy_with_saturating_logits() -> None:
    """Large logits (sigmoid == 1.0 in float32 everywhere above ~17) must not move the argmax."""
    batch = _box_batch()
    suite = LocalizationSuite(BOX_INFO, image_size=S)
    # background 30, a peak of 40 at the centre of each GT box: every sigmoid rounds to 1.0
    maps = torch.full((len(batch), 2, S, S), 30.0)
    for i, boxes in enumerate(batch.boxes):
        for c, x0, y0, x1, y1 in boxes.long().tolist():
            maps[i, c, (y0 + y1) // 2, (x0 + x1) // 2] = 40.0
    suite.accumulate(torch.zeros((3, 2)), maps, batch, "logits")
    assert suite.compute()["point_acc_micro"] == 1.0


def test_point_accuracy_default_is_pylons_and_raw_is_an_option() -> None:
    """Default: argmax of the upsampled sigmoid (PYLON); point_map="raw": of the upsampled logits.
    On this map the two differ: a sharp peak of 10 amid -8 (its upsampled logit stays high, its
    upsampled probability falls below 0.88) and a bottom row of 2.5 (probability 0.92)."""
    batch = _box_batch()
    maps = torch.full((len(batch), 2, 4, 4), -8.0)
    maps[:, :, 1, 1] = 10.0
    maps[:, :, 3, :] = 2.5
    up = lambda v: F.interpolate(v[:, None], (S, S), mode="bilinear")[:, 0]  # noqa: E731
    flat = maps.reshape(-1, 4, 4).double()
    p_arg = up(torch.sigmoid(flat)).flatten(1).argmax(1)
    r_arg = up(flat).flatten(1).argmax(1)
    assert bool((p_arg != r_arg).all())  # the orders disagree on every map here
    out = {}
    for point_map in ("probability", "raw"):
        suite = LocalizationSuite(BOX_INFO, image_size=S, point_map=point_map)
        suite.accumulate(torch.zeros((3, 2)), maps, batch, "logits")
        out[point_map] = suite.compute()
    # reference: the evaluator on the points of each order
    pairs = [(0, 0), (1, 0), (1, 1)]
    gts = [np.array([[4.0, 4, 8, 8]]), np.array([[0.0, 10, 4, 14]]), np.array([[8.0, 2, 12, 6]])]
    for point_map, arg in (("probability", p_arg), ("raw", r_arg)):
        ev = PointAccuracyEvaluator(("a", "b"))
        idx = [int(arg[i * 2 + c]) for i, c in pairs]
        ev.accumulate_points(
            [i // S for i in idx], [i % S for i in idx], [c for _, c in pairs], gts, S, S
        )
        assert out[point_map]["point_acc_micro"] == ev.compute()["point_acc_micro"]
    with pytest.raises(MetricInputError, match="point_map must be one of"):
        LocalizationSuite(BOX_INFO, image_size=S, point_map="logits")
