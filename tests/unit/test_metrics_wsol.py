"""wsolevaluation port: the golden vectors of its evaluation_test.py plus hand-computed cases."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from lesionsweep.metrics import (
    MaxBoxAccV2Evaluator,
    MetricInputError,
    PxAPEvaluator,
    boxes_to_wsol_convention,
    calculate_multiple_iou,
    compute_bboxes_from_scoremaps,
    normalize_scoremap,
    prepare_scoremaps,
    resize_bbox,
)
from sklearn.metrics import average_precision_score

TAUS = np.arange(0, 1, 0.2)

# array[y][x], from wsolevaluation's evaluation_test.py
UNIMODAL = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.4, 0.4, 0.4, 0.6],
        [0.0, 0.4, 1.0, 0.8, 0.6],
        [0.0, 0.4, 0.4, 0.4, 0.6],
    ]
)
MULTIMODAL = np.array(
    [
        [0.4, 0.0, 0.2, 0.2, 0.2],
        [0.4, 0.4, 0.0, 0.4, 0.0],
        [0.0, 0.0, 0.0, 0.4, 0.0],
        [1.0, 0.6, 0.8, 0.2, 0.2],
    ]
)


def _single(boxes: list[np.ndarray]) -> list[list[int]]:
    assert all(b.shape == (1, 4) for b in boxes)
    return [b[0].tolist() for b in boxes]


# ---------------------------------------------------------------- calculate_multiple_iou
def test_iou_shape_type_degenerate_zero() -> None:
    ious = calculate_multiple_iou(np.zeros((3, 4), np.int64), np.zeros((5, 4), np.int64))
    assert isinstance(ious, np.ndarray)
    assert ious.dtype == np.float64
    assert ious.shape == (3, 5)
    assert (ious == 1.0).all()


def test_iou_box_convention_raises() -> None:
    with pytest.raises(RuntimeError):
        calculate_multiple_iou(np.array([[1, 1, 0, 0]]), np.array([[1, 1, 2, 2]]))


def test_iou_eye_boxes() -> None:
    boxes = np.array([[1, 1, 3, 3], [4, 4, 5, 5]])
    assert (calculate_multiple_iou(boxes, boxes) == np.eye(2)).all()


def test_iou_realistic_value() -> None:
    ious = calculate_multiple_iou(np.array([[1, 2, 5, 6]]), np.array([[3, 1, 4, 5]]))
    assert ious[0, 0] == pytest.approx(8.0 / 27, abs=1e-6)


# ---------------------------------------------------------------- resize_bbox
def test_resize_bbox_case() -> None:
    assert resize_bbox((1, 2, 4, 3), (10, 20), (35, 10)) == (3, 1, 14, 1)


def test_resize_bbox_degenerate() -> None:
    assert resize_bbox((1, 2, 1, 2), (3, 3), (3, 3)) == (1, 2, 1, 2)


# ---------------------------------------------------------------- compute_bboxes_from_scoremaps
def test_boxes_zero_map() -> None:
    boxes, counts = compute_bboxes_from_scoremaps(np.zeros((3, 3)), TAUS)
    assert _single(boxes) == [[0, 0, 0, 0]] * 5
    assert counts == [1] * 5


def test_boxes_unimodal() -> None:
    boxes, _ = compute_bboxes_from_scoremaps(UNIMODAL, TAUS)
    assert _single(boxes) == [[1, 1, 4, 3], [1, 1, 4, 3], [2, 1, 4, 3], [2, 2, 4, 3], [2, 2, 3, 3]]


def test_boxes_multimodal_largest_contour() -> None:
    boxes, _ = compute_bboxes_from_scoremaps(MULTIMODAL, TAUS)
    assert _single(boxes) == [[0, 0, 4, 3], [0, 0, 2, 2], [0, 3, 3, 3], [2, 3, 3, 3], [0, 3, 1, 3]]


def test_boxes_multimodal_all_contours() -> None:
    # hand-derived: at tau=.2 (threshold 51, strict >) the 0.4/0.6/.. pixels form two 8-connected
    # regions; at tau=.6 (threshold 153) the 0.6 pixel (=153) is excluded, leaving 1.0 and 0.8.
    boxes, counts = compute_bboxes_from_scoremaps(MULTIMODAL, TAUS, multi_contour_eval=True)
    as_sets = [sorted(map(tuple, b.tolist())) for b in boxes]
    assert as_sets == [
        [(0, 0, 4, 3)],
        sorted([(0, 1, 4, 3), (0, 0, 2, 2)]),
        [(0, 3, 3, 3)],
        sorted([(2, 3, 3, 3), (0, 3, 1, 3)]),
        [(0, 3, 1, 3)],
    ]
    assert counts == [1, 2, 1, 2, 1]


def _literal_boxes(scoremap: np.ndarray, taus: np.ndarray) -> list[list[tuple[int, ...]]]:
    """wsolevaluation's box mining written out literally (cv2.threshold, every contour)."""
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    h, w = scoremap.shape
    out = []
    for tau in taus:
        _, binary = cv2.threshold(image, int(tau * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            out.append([(0, 0, 0, 0)])
            continue
        boxes = []
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            boxes.append((x, y, min(x + bw, w - 1), min(y + bh, h - 1)))
        out.append(sorted(boxes))
    return out


def test_boxes_match_literal_wsolevaluation_on_random_maps() -> None:
    rng = np.random.default_rng(3)
    taus = np.arange(0, 1, 0.01)
    for _ in range(4):
        low = rng.normal(size=(6, 7))
        scoremap = prepare_scoremaps(low[None], (40, 48))[0]
        ours, counts = compute_bboxes_from_scoremaps(scoremap, taus, multi_contour_eval=True)
        assert [sorted(map(tuple, b.tolist())) for b in ours] == _literal_boxes(scoremap, taus)
        assert counts == [len(b) for b in ours]


def test_boxes_hole_contour_counts() -> None:
    # a ring: RETR_TREE returns the outer contour and the hole's contour, both give boxes
    ring = np.zeros((5, 5))
    ring[1:4, 1:4] = 1.0
    ring[2, 2] = 0.0
    boxes, counts = compute_bboxes_from_scoremaps(ring, [0.5], multi_contour_eval=True)
    assert counts == [2]
    assert (1, 1, 4, 4) in set(map(tuple, boxes[0].tolist()))


def test_boxes_nan_map_raises_value_error() -> None:
    with pytest.raises(ValueError, match="compute_bboxes_from_scoremaps"):
        compute_bboxes_from_scoremaps(np.full((3, 3), np.nan), TAUS)


def test_boxes_out_of_range_raises() -> None:
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        compute_bboxes_from_scoremaps(UNIMODAL * 2, TAUS)


# ---------------------------------------------------------------- conversion / preparation
def test_boxes_to_wsol_convention() -> None:
    boxes = np.array(
        [
            [2.0, 1.0, 5.0, 3.0],  # pixel cols 2..4, rows 1..2; x1 = 5 is clipped to W-1
            [0.25, 0.5, 2.5, 1.0 + 1e-9],  # touches cols 0..2, row 0 (1e-9 is float noise)
            [3.0, 3.0, 3.0, 3.0],  # zero-size
            [-2.0, -1.0, 50.0, 60.0],  # clipped to the 5x4 image
        ]
    )
    out = boxes_to_wsol_convention(boxes, width=5, height=4)
    assert out.dtype == np.int64
    assert out.tolist() == [[2, 1, 4, 3], [0, 0, 3, 1], [3, 3, 3, 3], [0, 0, 4, 3]]


def test_converted_gt_equals_box_mined_from_its_indicator_map() -> None:
    for box in ([1.0, 1.0, 4.0, 3.0], [0.0, 2.0, 5.0, 4.0], [2.0, 0.0, 3.0, 1.0]):
        x0, y0, x1, y1 = map(int, box)
        indicator = np.zeros((4, 5))
        indicator[y0:y1, x0:x1] = 1.0
        mined, _ = compute_bboxes_from_scoremaps(indicator, [0.5], multi_contour_eval=True)
        gt = boxes_to_wsol_convention(np.array([box]), width=5, height=4)
        assert mined[0].tolist() == gt.tolist()
        assert calculate_multiple_iou(mined[0], gt)[0, 0] == 1.0


def test_normalize_scoremap() -> None:
    assert (normalize_scoremap(np.full((4, 5), 3.0)) == 0).all()
    n = normalize_scoremap(UNIMODAL * 4 - 1)
    np.testing.assert_allclose(n, UNIMODAL)
    with pytest.raises(ValueError, match="normalize_scoremap"):
        normalize_scoremap(np.array([[np.nan, 1.0]]))


def test_prepare_scoremaps_matches_single_cv2_resize() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 4, 5)) * 7
    maps[2] = 1.5  # constant map -> zeros
    out = prepare_scoremaps(maps, (12, 10))
    assert out.shape == (3, 12, 10) and out.dtype == np.float64
    for i in range(2):
        ref = cv2.resize(maps[i], (10, 12), interpolation=cv2.INTER_CUBIC)
        np.testing.assert_allclose(out[i], normalize_scoremap(ref), atol=1e-12)
        assert out[i].min() == 0.0 and out[i].max() == 1.0
    assert (out[2] == 0).all()
    with pytest.raises(ValueError, match="MaxBoxAccV2"):
        prepare_scoremaps(np.full((1, 4, 5), np.nan), (8, 8), "MaxBoxAccV2")


# ---------------------------------------------------------------- MaxBoxAccV2
def test_maxboxacc_v2_hand_computed() -> None:
    # image 1: unimodal map, GT (2,1,4,3) inclusive (9 px). Best IoU per tau (.0,.2,.4,.6,.8):
    #   .75, .75, 1, 6/9, 4/9.
    # image 2: multimodal map, GT (0,3,1,3) (2 px). Best IoU over all contours per tau:
    #   2/20, 2/15, 2/4, 1, 1.
    ev = MaxBoxAccV2Evaluator(cam_curve_interval=0.2)
    ev.accumulate(np.stack([UNIMODAL, MULTIMODAL]), [np.array([[2, 1, 4, 3]]), [[0, 3, 1, 3]]])
    curves = ev.accuracy_curves()
    np.testing.assert_allclose(curves[0], [0.5, 0.5, 1, 1, 1])  # IoU >= .3
    np.testing.assert_allclose(curves[1], [0.5, 0.5, 1, 1, 0.5])  # IoU >= .5
    np.testing.assert_allclose(curves[2], [0.5, 0.5, 0.5, 0.5, 0.5])  # IoU >= .7
    res = ev.compute()
    assert res["maxboxacc@30"] == 1.0
    assert res["maxboxacc@50"] == 1.0
    assert res["maxboxacc@70"] == 0.5
    assert res["maxboxacc_v2"] == pytest.approx(2.5 / 3)
    ev.reset()
    assert math.isnan(ev.compute()["maxboxacc_v2"])


def test_maxboxacc_v1_uses_largest_contour_only() -> None:
    ev = MaxBoxAccV2Evaluator(cam_curve_interval=0.2, multi_contour_eval=False)
    ev.accumulate(MULTIMODAL[None], [[[0, 3, 1, 3]]])
    # largest-contour boxes: [0,0,4,3] .1, [0,0,2,2] 0, [0,3,3,3] .5, [2,3,3,3] 0, [0,3,1,3] 1
    np.testing.assert_allclose(ev.accuracy_curves()[1], [0, 0, 1, 0, 1])


def test_maxboxacc_constant_map_box_is_corner_pixel() -> None:
    ev = MaxBoxAccV2Evaluator(cam_curve_interval=0.2)
    ev.accumulate(np.zeros((2, 4, 5)), [[[0, 0, 0, 0]], [[1, 1, 2, 2]]])
    # no contour -> box [0,0,0,0]: IoU 1 with the corner GT, 0 with the other
    assert ev.compute()["maxboxacc@70"] == 0.5


def test_maxboxacc_rejects_nan_and_missing_gt() -> None:
    ev = MaxBoxAccV2Evaluator()
    with pytest.raises(MetricInputError, match="MaxBoxAccV2"):
        ev.accumulate(np.full((1, 4, 5), np.nan), [[[0, 0, 1, 1]]])
    with pytest.raises(MetricInputError, match="at least one GT box"):
        ev.accumulate(np.zeros((1, 4, 5)), [np.zeros((0, 4))])


# ---------------------------------------------------------------- PxAP
MASK = np.zeros((4, 5), dtype=bool)
MASK[1:3, 1:4] = True  # 6 of 20 pixels


def test_pxap_perfect_map_is_1() -> None:
    ev = PxAPEvaluator()
    ev.accumulate(MASK[None].astype(np.float64), MASK[None])
    assert ev.compute()["pxap"] == 1.0


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_pxap_constant_map_is_positive_fraction(value: float) -> None:
    ev = PxAPEvaluator()
    ev.accumulate(np.full((1, 4, 5), value), MASK[None])
    assert ev.compute()["pxap"] == pytest.approx(6 / 20)


def test_pxap_ignore_mask_drops_pixels() -> None:
    ignore = np.zeros((4, 5), dtype=bool)
    ignore[0, :] = True  # 5 negatives ignored
    ev = PxAPEvaluator()
    ev.accumulate(np.full((1, 4, 5), 0.3), MASK[None], ignore[None])
    assert ev.compute()["pxap"] == pytest.approx(6 / 15)


def test_pxap_hand_ranking() -> None:
    # scores .9 (pos), .8 (neg), .7 (pos), .1 (neg): AP = 1 * 1/2 + 2/3 * 1/2
    ev = PxAPEvaluator()
    ev.accumulate(np.array([[[0.9, 0.8, 0.7, 0.1]]]), np.array([[[True, False, True, False]]]))
    assert ev.compute()["pxap"] == pytest.approx(0.5 + 1 / 3)


def test_pxap_matches_sklearn_on_bin_quantised_scores() -> None:
    rng = np.random.default_rng(1)
    ev = PxAPEvaluator(cam_curve_interval=0.01)
    edges = ev.bin_edges[:-2]  # [0, .01, ..., .99, 1.0]
    idx = rng.integers(0, len(edges), size=(6, 4, 5))
    scores = edges[idx]
    gt = rng.random((6, 4, 5)) < scores * 0.8 + 0.05
    ev.accumulate(scores[:3], gt[:3])
    ev.accumulate(scores[3:], gt[3:])  # accumulation over batches
    ref = average_precision_score(gt.ravel(), scores.ravel())
    assert ev.compute()["pxap"] == pytest.approx(ref, rel=1e-12)


def test_pxap_no_positive_is_nan_and_nan_map_raises() -> None:
    ev = PxAPEvaluator()
    ev.accumulate(np.full((1, 4, 5), 0.5), np.zeros((1, 4, 5), bool))
    assert math.isnan(ev.compute()["pxap"])
    with pytest.raises(ValueError, match="PxAP"):
        ev.accumulate(np.full((1, 4, 5), np.nan), MASK[None])
    with pytest.raises(ValueError, match="PxAP"):
        ev.accumulate(np.full((1, 4, 5), 1.5), MASK[None])


def test_prepare_scoremaps_handles_more_maps_than_cv2_channels() -> None:
    """OpenCV 5 resizes at most 128 channels per call: 300 maps must still work, map by map."""
    from lesionsweep.metrics.wsol import prepare_scoremaps

    rng = np.random.default_rng(0)
    maps = rng.random((300, 4, 5)).astype(np.float32)
    out = prepare_scoremaps(maps, (16, 20), "MaxBoxAccV2")
    assert out.shape == (300, 16, 20)
    single = prepare_scoremaps(maps[257:258], (16, 20), "MaxBoxAccV2")
    np.testing.assert_allclose(out[257], single[0], atol=1e-6)
