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
from lesionsweep.metrics.levelsets import level_boxes
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


def _adversarial_maps() -> list[np.ndarray]:
    """Maps whose level sets have nested components and holes, 1-px lines, shapes on the
    border, checkerboards (diagonal-only contacts), single pixels and constant maps."""
    maps = []
    rings = np.zeros((15, 15))
    for r, v in enumerate((0.2, 0.0, 0.6, 0.0, 1.0, 0.3, 0.9)):  # concentric squares
        rings[r : 15 - r, r : 15 - r] = v
    maps.append(rings)
    checker = (np.indices((9, 12)).sum(axis=0) % 2).astype(np.float64)
    maps.append(checker)
    maps.append(checker * np.linspace(0.1, 1.0, 12)[None, :])
    lines = np.zeros((11, 13))
    lines[::2, :] = 0.5  # full-width 1-px rows
    lines[:, 6] = 1.0  # one column joining them
    maps.append(lines)
    border = np.zeros((8, 10))
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = 0.8  # a frame on the edge
    border[3:5, 4:6] = 1.0
    maps.append(border)
    spiral = np.zeros((12, 12))
    spiral[1, 1:11] = spiral[1:11, 10] = spiral[10, 2:11] = spiral[3:11, 2] = 0.7
    spiral[3, 2:9] = spiral[3:9, 8] = spiral[8, 4:9] = spiral[5:9, 4] = 0.7
    maps.append(spiral)
    diag = np.eye(10)[:, ::-1] * 0.9 + np.eye(10) * 0.4  # an X of 8-connected pixels
    maps.append(np.minimum(diag, 1.0))
    dot = np.zeros((5, 6))
    dot[2, 3] = 1.0
    maps.append(dot)
    # two diamond rings (widest mid-height, with a diamond hole each), joined by a bar at the
    # bottom: long stretches of rows continuing run for run carry the widest extents of the
    # components and holes until their chains end or join
    yy, xx = np.mgrid[0:21, 0:31]
    rings2 = np.zeros((21, 31))
    for cx in (7, 23):
        d = np.abs(xx - cx) + np.abs(yy - 9)
        rings2[(d <= 7) & (d >= 3)] = 0.6 + 0.02 * (7 - d[(d <= 7) & (d >= 3)])
    rings2[17:19, 7:24] = 0.5
    maps.append(rings2)
    # a hole B (an upside-down U) that joins an older hole A while a gap of B's other arm
    # carries on unchanged (the arm's chain keeps B's node, no longer a root), then that arm
    # widens left and ends: its extent must reach the joined hole's root
    joined = np.full((11, 11), 0.6)
    joined[1:9, 8] = 0.0  # A, from row 1
    joined[2, 2:6] = 0.0  # B's top, row 2
    joined[3:8, 2] = 0.0  # B's left arm
    joined[3:5, 5] = 0.0  # B's right arm, joined to A in row 5 by the gap 5..8
    joined[5:9, 5:9] = 0.0
    joined[7, 1] = 0.0  # the left arm's widest row, then it ends
    maps.append(joined)
    maps.append(np.ones((6, 7)))
    maps.append(np.zeros((6, 7)))
    maps.append(np.full((1, 1), 0.4))
    return maps


def test_level_boxes_equal_find_contours_on_adversarial_maps() -> None:
    taus = np.arange(0, 1, 0.01)
    rng = np.random.default_rng(11)
    maps = _adversarial_maps()
    maps += [np.clip(m + rng.normal(scale=0.05, size=m.shape), 0, 1) for m in maps]
    for scoremap in maps:
        ours, counts = compute_bboxes_from_scoremaps(scoremap, taus, multi_contour_eval=True)
        ref, ref_counts = reference_mine_boxes((scoremap * 255).astype(np.uint8), taus, True)
        assert counts == ref_counts
        for a, b in zip(ours, ref, strict=True):
            assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))


def test_fast_evaluators_equal_reference_on_adversarial_and_float32_maps() -> None:
    """Every batch goes through the compiled batch kernels; float32 maps are quantised in
    their own precision exactly as ``uint8(map * 255)`` does."""
    rng = np.random.default_rng(12)
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for m in _adversarial_maps():
        by_shape.setdefault(m.shape, []).append(m)
    by_shape[(30, 40)] = list(_random_maps(rng, 10, 30, 40))
    for shape, group in by_shape.items():
        maps = np.stack(group)
        boxes = _random_boxes(rng, len(maps), *shape)
        for arr in (maps, maps.astype(np.float32)):
            fast, ref = MaxBoxAccV2Evaluator(), ReferenceMaxBoxAccV2Evaluator()
            fast.accumulate(arr, boxes)
            ref.accumulate(arr, boxes)
            np.testing.assert_array_equal(fast.num_correct, ref.num_correct)
            gt = rng.random(arr.shape) < 0.4
            pf, pr = PxAPEvaluator(), ReferencePxAPEvaluator()
            pf.accumulate(arr, gt)
            pr.accumulate(arr, gt)
            np.testing.assert_array_equal(pf.gt_true_hist, pr.gt_true_hist)
            np.testing.assert_array_equal(pf.gt_false_hist, pr.gt_false_hist)
            names = ("a", "b")
            nf, nr = NihBoxEvaluator(names), ReferenceNihBoxEvaluator(names)
            classes = np.arange(len(arr)) % 2
            fboxes = [b.astype(np.float64) + 0.5 for b in boxes]
            nf.accumulate(arr, classes, fboxes)
            nr.accumulate(arr, classes, fboxes)
            assert _same(nf.compute(), nr.compute())


def test_batch_kernels_reject_nan_and_out_of_range_without_counting() -> None:
    maps = np.random.default_rng(13).random((3, 8, 9))
    maps[2, 4, 4] = np.nan
    mb, px, nih = MaxBoxAccV2Evaluator(), PxAPEvaluator(), NihBoxEvaluator(("a",))
    boxes = [np.array([[1, 1, 4, 4]])] * 3
    with pytest.raises(ValueError, match="NaN"):
        mb.accumulate(maps, boxes)
    with pytest.raises(ValueError, match="NaN"):
        px.accumulate(maps, maps > 0.5)
    with pytest.raises(ValueError, match="NaN"):
        nih.accumulate(maps, [0, 0, 0], boxes)
    maps[2, 4, 4] = 1.5
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        mb.accumulate(maps, boxes)
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        px.accumulate(maps, maps > 0.5)
    assert mb.count == 0 and mb.num_correct.sum() == 0
    assert px.gt_true_hist.sum() == 0 and px.gt_false_hist.sum() == 0
    assert nih.compute()["nih_num_boxes"] == 0


@pytest.mark.parametrize("interval", [0.01, 0.03, 0.001, 0.07, 0.3, 1 / 3, 0.999, 0.0123])
def test_pxap_grid_kernel_equals_reference_on_every_edge_across_chunks(interval: float) -> None:
    """The vectorised grid kernel (bins from ``k * step``, one step up/down) against
    ``searchsorted``: every edge, its neighbouring floats and random values, in maps whose
    pixel count spans several 4096-pixel chunks and is not a multiple of 4."""
    rng = np.random.default_rng(21)
    fast, ref = PxAPEvaluator(interval), ReferencePxAPEvaluator(interval)
    assert fast._grid  # the grid kernel is the one under test
    edges = fast.bin_edges[:-2]
    special = np.concatenate([edges, np.nextafter(edges, 2.0), np.nextafter(edges, -1.0)])
    maps = rng.random((3, 61, 73))
    maps.reshape(-1)[: special.size] = np.clip(special, 0.0, 1.0)
    maps.reshape(-1)[-5:] = [0.0, 1.0, np.nextafter(1.0, 0.0), 5e-324, 0.5]
    gt = rng.random(maps.shape) < 0.3
    ignore = rng.random(maps.shape) < 0.1
    for ev in (fast, ref):
        ev.accumulate(maps, gt)
        ev.accumulate(maps[:2], gt[:2], ignore[:2])
    np.testing.assert_array_equal(fast.gt_true_hist, ref.gt_true_hist)
    np.testing.assert_array_equal(fast.gt_false_hist, ref.gt_false_hist)
    assert fast.compute() == ref.compute()
    fast._grid = False  # the general kernel (any ascending edges) gives the same
    fast.reset()
    fast.accumulate(maps, gt)
    fast.accumulate(maps[:2], gt[:2], ignore[:2])
    np.testing.assert_array_equal(fast.gt_true_hist, ref.gt_true_hist)
    np.testing.assert_array_equal(fast.gt_false_hist, ref.gt_false_hist)


def _cam_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A trained CAM's look: a low-res bump plus noise, bicubic-upsampled, min-max normalised."""
    low = rng.normal(scale=0.7, size=(1, max(h // 16, 3), max(w // 16, 3)))
    yy, xx = np.mgrid[0 : low.shape[1], 0 : low.shape[2]] + 0.5
    cy, cx = rng.uniform(0.2, 0.8, 2) * low.shape[1:]
    low[0] += 3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2)
    return prepare_scoremaps(low, (h, w))[0]


def test_level_boxes_equal_find_contours_on_cam_like_and_noisy_maps() -> None:
    """Smooth maps take the run-for-run path for most (row, level) pairs and the general merge
    where contours split, merge, start or end; noisy ones take the general merge almost always
    and need more than the kernel's initial 1024 nodes. Every threshold's boxes must be
    findContours' boxes."""
    rng = np.random.default_rng(17)
    taus = np.arange(0, 1, 0.01)
    smooth = [_cam_like(rng, 70, 90) for _ in range(4)]
    noisy = [np.clip(m + rng.normal(scale=0.15, size=m.shape), 0, 1) for m in smooth[:2]]
    for scoremap in smooth + noisy:
        ours, counts = compute_bboxes_from_scoremaps(scoremap, taus, multi_contour_eval=True)
        ref, ref_counts = reference_mine_boxes((scoremap * 255).astype(np.uint8), taus, True)
        assert counts == ref_counts
        for a, b in zip(ours, ref, strict=True):
            assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))
    q = (noisy[0] * 60).astype(np.uint16)  # 60 levels of pixel noise: thousands of boxes
    levels, boxes = level_boxes(q, 60)
    assert len(boxes) > 1024
    maps = np.stack(smooth + noisy)
    gts = _random_boxes(rng, len(maps), 70, 90)
    fast, ref_ev = MaxBoxAccV2Evaluator(), ReferenceMaxBoxAccV2Evaluator()
    fast.accumulate(maps, gts)
    ref_ev.accumulate(maps, gts)
    np.testing.assert_array_equal(fast.num_correct, ref_ev.num_correct)


def test_nih_with_many_levels_signed_zeros_and_infinities_equals_reference() -> None:
    """More than 8 levels (the kernel codes 8 levels per pass over a map), levels below 0 (on
    constant maps too) and above 255, maps of +-0.0, and inf/-inf refused like NaN."""
    rng = np.random.default_rng(23)
    names = ("a", "b")
    levels = (-1.0, 0.0, 10.0, 60.0, 100.0, 127.5, 180.0, 200.0, 240.0, 254.9, 255.0, 300.0)
    maps = _random_maps(rng, 20, 17, 23) * 3.0 - 1.0
    maps[3] = np.where(rng.random((17, 23)) < 0.5, 0.0, -0.0)  # constant up to the zero's sign
    maps[4, :, :11] = -0.0
    maps[5] = 0.0  # runs over whole 8-pixel words, ending on and off word boundaries
    maps[5, :, :16] = 2.0
    maps[5, 3:9, 7:23] = 1.5
    maps[5, 12, 15:17] = 1.0
    maps[6] = np.where(np.arange(23) % 9 < 7, 2.0, 0.0)[None, :] * (np.arange(17) % 5 > 0)[:, None]
    classes = rng.integers(0, 2, 20)
    boxes = [b.astype(np.float64) + 0.25 for b in _random_boxes(rng, 20, 17, 23)]
    fast, ref = (
        NihBoxEvaluator(names, levels=levels),
        ReferenceNihBoxEvaluator(names, levels=levels),
    )
    fast.accumulate(maps, classes, boxes)
    ref.accumulate(maps, classes, boxes)
    assert _same(fast.compute(), ref.compute())
    for bad in (np.inf, -np.inf):
        maps[7, 3, 4] = bad
        nih = NihBoxEvaluator(names)
        with pytest.raises(ValueError):
            nih.accumulate(maps, classes, boxes)
        assert nih.compute()["nih_num_boxes"] == 0
