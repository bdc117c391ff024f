"""PYLON point localization accuracy and its chance level."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lesionsweep.metrics import (
    MetricInputError,
    PointAccuracyEvaluator,
    argmax_points,
    points_in_boxes,
    random_point_chance,
)
from lesionsweep.metrics.point import bilinear_matrix, upsampled_argmax


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


# ------------------------------------------------- PYLON's point: sigmoid first, then upsample


def _bilinear_ref(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize written per output pixel from the half-pixel rule (align_corners=False,
    PYLON's F.interpolate call, methods.md section 3.3): source coordinate (j + 0.5) * in / out
    - 0.5, clamped to the input; the two nearest samples weighted linearly."""
    h, w = m.shape

    def taps(j: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        s = min(max((j + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        i0 = math.floor(s)
        return i0, min(i0 + 1, n_in - 1), s - i0

    out = np.zeros((height, width))
    for r in range(height):
        r0, r1, fr = taps(r, h, height)
        for c in range(width):
            c0, c1, fc = taps(c, w, width)
            top = (1 - fc) * m[r0, c0] + fc * m[r0, c1]
            bottom = (1 - fc) * m[r1, c0] + fc * m[r1, c1]
            out[r, c] = (1 - fr) * top + fr * bottom
    return out


def _first_argmax(a: np.ndarray) -> tuple[int, int]:
    i = int(np.argmax(a))
    return i // a.shape[1], i % a.shape[1]


def test_bilinear_matrix_is_the_half_pixel_rule_and_torchs() -> None:
    rng = np.random.default_rng(1)
    m = rng.normal(size=(3, 4))
    for height, width in ((12, 16), (7, 5), (3, 4)):
        ours = bilinear_matrix(3, height) @ m @ bilinear_matrix(4, width).T
        np.testing.assert_allclose(ours, _bilinear_ref(m, height, width), rtol=0, atol=1e-12)
        t = torch.from_numpy(m)[None, None]
        up = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(ours, up[0, 0].numpy(), rtol=0, atol=1e-12)


def test_point_is_argmax_of_upsampled_sigmoid_not_of_upsampled_logits() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(scale=4.0, size=(300, 3, 3))
    rows, cols = upsampled_argmax(maps, (16, 16))
    raw_rows, raw_cols = upsampled_argmax(maps, (16, 16), "raw")
    moved = 0
    for i, m in enumerate(maps):
        ref = _first_argmax(_bilinear_ref(1 / (1 + np.exp(-m)), 16, 16))
        assert (rows[i], cols[i]) == ref, i
        raw = _first_argmax(_bilinear_ref(m, 16, 16))
        assert (raw_rows[i], raw_cols[i]) == raw, i
        moved += ref != raw
    assert moved > 10  # the two orders do not commute: the point moves on some maps


def test_point_without_sigmoid_saturation() -> None:
    """Logits where float32 (above ~17) and even float64 (above ~37) sigmoid round to 1.0."""
    rng = np.random.default_rng(2)
    for lo in (20.0, 45.0, 300.0):
        maps = lo + rng.uniform(0, 5, size=(50, 3, 4))
        rows, cols = upsampled_argmax(maps.astype(np.float32), (9, 12))
        for i, m in enumerate(maps.astype(np.float32).astype(np.float64)):
            # up(sigmoid(x)) = 1 - up(sigmoid(-x)); sigmoid(-x) = exp(-x) / (1 + exp(-x))
            comp = _bilinear_ref(np.exp(-m) / (1 + np.exp(-m)), 9, 12)
            i_min = int(np.argmin(comp))
            assert (rows[i], cols[i]) == (i_min // 12, i_min % 12), (lo, i)
        with torch.no_grad():  # what a float32 implementation gets: every value 1.0
            p32 = F.interpolate(torch.sigmoid(torch.from_numpy(maps).float())[:, None], (9, 12))
        assert bool((p32 == 1.0).all())


def test_point_of_probability_maps_and_bad_names() -> None:
    maps = np.zeros((1, 2, 2))
    maps[0, 1, 0] = 1.0
    # rows 6 and 7 both clamp to source row 1 (value 1 at column 0): the first maximum wins
    assert [a.tolist() for a in upsampled_argmax(maps, (8, 8), "raw")] == [[6], [0]]
    with pytest.raises(MetricInputError, match="point_map must be one of"):
        upsampled_argmax(maps, (8, 8), "sigmoid")
    assert [a.tolist() for a in upsampled_argmax(np.zeros((0, 2, 2)), (8, 8))] == [[], []]


def test_accumulate_maps_equals_points_of_the_reference() -> None:
    rng = np.random.default_rng(3)
    maps = rng.normal(scale=3.0, size=(6, 4, 4))
    boxes = [np.array([[2.0, 2.0, 9.0, 9.0]])] * 6
    ev = PointAccuracyEvaluator(("a", "b"))
    ev.accumulate_maps(maps, (16, 16), [0, 1, 0, 1, 0, 1], boxes)
    hits = [
        points_in_boxes(
            *[[v] for v in _first_argmax(_bilinear_ref(1 / (1 + np.exp(-m)), 16, 16))], boxes[:1]
        )[0]
        for m in maps
    ]
    assert ev.compute()["point_acc_micro"] == pytest.approx(np.mean(hits))
    assert ev.compute()["point_acc_chance_micro"] == pytest.approx(64 / 256)
