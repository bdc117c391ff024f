"""The fast MaxBoxAccV2 / PxAP / NIH kernels give exactly the reference kernels' results.

The references (``lesionsweep.metrics.reference``) are the straightforward transcriptions of
wsolevaluation's and Wang's definitions (a whole-map contour search at every threshold,
``searchsorted`` per pixel, ``connectedComponentsWithStats``). Maps here are of every kind the
fast paths treat differently: smooth CAM-like maps, pixel noise (many components and holes),
binary maps, maps with values exactly on the bin edges, constant maps, 1-pixel-wide maps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from lesionsweep.metrics import (
    MaxBoxAccV2Evaluator,
    NihBoxEvaluator,
    PxAPEvaluator,
    compute_bboxes_from_scoremaps,
    prepare_scoremaps,
)
from lesionsweep.metrics.nih import _component_boxes, normalize_to_255
from lesionsweep.metrics.reference import (
    ReferenceMaxBoxAccV2Evaluator,
    ReferenceNihBoxEvaluator,
    ReferencePxAPEvaluator,
    reference_component_boxes,
    reference_mine_boxes,
    reference_normalize_to_255,
)


def _random_maps(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """``n`` maps in [0, 1] of mixed kinds (smooth, noise, binary, bin-edge values, constant)."""
    out = np.empty((n, h, w))
    for i in range(n):
        kind = i % 5
        if kind == 0:
            out[i] = prepare_scoremaps(rng.normal(size=(1, 3, 4)), (h, w))[0]
        elif kind == 1:
            out[i] = rng.random((h, w))
        elif kind == 2:
            out[i] = (rng.random((h, w)) < rng.uniform(0.2, 0.8)).astype(np.float64)
        elif kind == 3:
            out[i] = np.arange(0, 1, 0.01)[rng.integers(0, 100, (h, w))]
        else:
            out[i] = rng.choice([0.0, 0.5, 1.0])
    return out


def _random_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> list[np.ndarray]:
    boxes = []
    for _ in range(n):
        g = int(rng.integers(1, 3))
        x0 = rng.integers(0, w, g)
        y0 = rng.integers(0, h, g)
        x1 = np.minimum(x0 + rng.integers(0, w, g), w - 1)
        y1 = np.minimum(y0 + rng.integers(0, h, g), h - 1)
        boxes.append(np.stack([x0, y0, x1, y1], axis=1).astype(np.int64))
    return boxes


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


@pytest.mark.parametrize("shape", [(24, 31), (1, 17), (9, 1), (40, 40)])
def test_box_mining_equals_reference(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    taus = np.arange(0, 1, 0.01)
    for scoremap in _random_maps(rng, 10, *shape):
        for multi in (True, False):
            ours, counts = compute_bboxes_from_scoremaps(scoremap, taus, multi_contour_eval=multi)
            image = (scoremap * 255).astype(np.uint8)
            ref, ref_counts = reference_mine_boxes(image, taus, multi)
            assert counts == ref_counts
            for a, b in zip(ours, ref, strict=True):
                assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))


@pytest.mark.parametrize("multi", [True, False])
@pytest.mark.parametrize("interval", [0.01, 0.05, 0.001])
def test_maxboxacc_equals_reference(multi: bool, interval: float) -> None:
    rng = np.random.default_rng(7)
    for h, w in ((20, 27), (33, 16)):
        maps = _random_maps(rng, 15, h, w)
        boxes = _random_boxes(rng, 15, h, w)
        fast = MaxBoxAccV2Evaluator(interval, multi_contour_eval=multi)
        ref = ReferenceMaxBoxAccV2Evaluator(interval, multi_contour_eval=multi)
        for s in (slice(0, 7), slice(7, 15)):  # accumulation over batches
            fast.accumulate(maps[s], boxes[s])
            ref.accumulate(maps[s], boxes[s])
        np.testing.assert_array_equal(fast.num_correct, ref.num_correct)
        assert fast.compute() == ref.compute()


@pytest.mark.parametrize("interval", [0.01, 0.03, 0.001, 0.07])
def test_pxap_bins_and_value_equal_reference(interval: float) -> None:
    rng = np.random.default_rng(3)
    fast, ref = PxAPEvaluator(interval), ReferencePxAPEvaluator(interval)
    edges = fast.bin_edges[:-2]
    on_edges = np.concatenate([edges, np.nextafter(edges, 2.0), np.nextafter(edges, -1.0)])
    on_edges = np.clip(on_edges, 0.0, 1.0)
    expected = np.searchsorted(fast.bin_edges, on_edges, side="right") - 1
    np.testing.assert_array_equal(fast.bin_index(on_edges), expected)
    maps = _random_maps(rng, 20, 13, 11)
    gt = rng.random(maps.shape) < 0.3
    ignore = rng.random(maps.shape) < 0.1
    for s in (slice(0, 10), slice(10, 20)):
        fast.accumulate(maps[s], gt[s], ignore[s])
        ref.accumulate(maps[s], gt[s], ignore[s])
    fast.accumulate(maps, gt)
    ref.accumulate(maps, gt)
    np.testing.assert_array_equal(fast.gt_true_hist, ref.gt_true_hist)
    np.testing.assert_array_equal(fast.gt_false_hist, ref.gt_false_hist)
    assert fast.compute() == ref.compute()


def test_nih_component_boxes_equal_connected_components() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        binary = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        ours = sorted(map(tuple, _component_boxes(binary).tolist()))
        assert ours == sorted(map(tuple, reference_component_boxes(binary).tolist()))
    ring = np.zeros((7, 7), np.uint8)  # a component inside another's hole
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0
    ring[3, 3] = 1
    assert sorted(map(tuple, _component_boxes(ring).tolist())) == [(1, 1, 6, 6), (3, 3, 4, 4)]


def test_nih_evaluator_equals_reference() -> None:
    rng = np.random.default_rng(9)
    names = ("a", "b", "c")
    fast, ref = NihBoxEvaluator(names), ReferenceNihBoxEvaluator(names)
    maps = _random_maps(rng, 25, 21, 26) * 7.0 - 2.0  # any scale: the evaluator normalises
    classes = rng.integers(0, 3, 25)
    boxes = [b.astype(np.float64) + rng.random((len(b), 4)) for b in _random_boxes(rng, 25, 21, 26)]
    fast.accumulate(maps, classes, boxes)
    ref.accumulate(maps, classes, boxes)
    assert _same(fast.compute(), ref.compute())


def test_nih_normalisation_is_bitwise_the_reference() -> None:
    rng = np.random.default_rng(2)
    maps = _random_maps(rng, 20, 9, 14) * rng.uniform(-50, 50) + rng.normal()
    np.testing.assert_array_equal(normalize_to_255(maps), reference_normalize_to_255(maps))
