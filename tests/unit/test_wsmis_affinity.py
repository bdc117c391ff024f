"""Pairs, affinities, IRNet losses and the random walk (WSMIS stage 2) on hand-made grids."""

from __future__ import annotations

import math

import pytest
import torch
from lesionsweep.methods.wsmis.affinity import (
    IGNORE,
    PairIndex,
    affinity_loss,
    ir_labels_from_cams,
    masks_from_random_walk,
    pair_labels,
    path_affinity,
    random_walk,
)
from lesionsweep.methods.wsmis.affinity import _path as path_of


def test_half_disk_offsets_cover_each_unordered_pair_once() -> None:
    idx = PairIndex.build(3)
    offs = {tuple(o) for o in idx.offsets.tolist()}
    expected = {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if 0 < dy * dy + dx * dx < 9}
    assert len(offs) == idx.num_offsets == 12
    assert all((-dy, -dx) not in offs for dy, dx in offs)
    assert offs | {(-dy, -dx) for dy, dx in offs} == expected
    full = PairIndex.build(3, full=True)
    assert {tuple(o) for o in full.offsets.tolist()} == expected
    with pytest.raises(ValueError, match="radius"):
        PairIndex.build(1)


def test_path_is_the_band_around_the_segment() -> None:
    assert sorted(path_of(0, 2)) == [(0, 0), (0, 1), (0, 2)]
    assert sorted(path_of(2, 2)) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert sorted(path_of(1, -1)) == [(0, -1), (0, 0), (1, -1), (1, 0)]


def test_path_affinity_on_a_hand_made_map() -> None:
    b = torch.tensor([[[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.0, 0.0]]])
    idx = PairIndex.build(2)  # offsets (0, 1), (1, -1), (1, 0), (1, 1)
    assert idx.offsets.tolist() == [[0, 1], [1, -1], [1, 0], [1, 1]]
    aff = path_affinity(b, idx)[0]  # [O, 3, 3]
    assert aff[0, 0, 0] == pytest.approx(0.5)  # (0,0)->(0,1) crosses B = 0.5
    assert aff[3, 0, 0] == pytest.approx(0.5)  # (0,0)->(1,1): the band includes (0,1)
    assert aff[2, 1, 0] == pytest.approx(0.8)  # (1,0)->(2,0) ends on B = 0.2
    assert aff[2, 1, 2] == pytest.approx(1.0)  # clean pair
    assert aff[2, 2, 0] == 0.0  # leaves the grid
    assert aff[1, 0, 0] == 0.0  # (0,0)->(1,-1) leaves the grid


def test_pair_labels_and_ignore() -> None:
    lab = torch.tensor([[[0, 0, 1], [IGNORE, 1, 1]]])
    bg, fg, neg = pair_labels(lab, PairIndex.build(2))
    # offset (0, 1): (0,0)-(0,1) bg/bg; (0,1)-(0,2) bg/fg; (1,0)-(1,1) ignore; (1,1)-(1,2) fg/fg
    assert bg[0, 0].tolist() == [[1, 0, 0], [0, 0, 0]]
    assert neg[0, 0].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert fg[0, 0].tolist() == [[0, 0, 0], [0, 1, 0]]
    # offset (1, 0): (0,0)-(1,0) touches ignore; (0,1)-(1,1) bg/fg; (0,2)-(1,2) fg/fg
    assert bg[0, 2, 0].tolist() == [0, 0, 0]
    assert neg[0, 2, 0].tolist() == [0, 1, 0]
    assert fg[0, 2, 0].tolist() == [0, 0, 1]
    assert (bg + fg + neg).max() <= 1


def test_affinity_and_displacement_loss_by_hand() -> None:
    idx = PairIndex.build(2)
    b = torch.tensor([[[0.0, 0.5, 0.0]]])  # one row of three grid pixels
    disp = torch.tensor([[[[0.0, 0.0, 0.0]], [[3.0, 1.0, 0.0]]]])  # [1, 2, 1, 3]: rows, cols
    # labels bg, bg, fg: pair (0->1) positive background with aff 0.5, (1->2) negative, aff 0.5
    t = affinity_loss(b, disp, torch.tensor([[[0, 0, 1]]]), idx)
    eps = 1e-5
    pos_bg = -math.log(0.5 + eps) / (1 + eps)
    assert float(t.pos) == pytest.approx(pos_bg / 2, rel=1e-5)
    assert float(t.neg) == pytest.approx(-math.log(1 + eps - 0.5) / (1 + eps), rel=1e-5)
    assert float(t.dp_bg) == pytest.approx(2.0 / (2 + eps), rel=1e-5)  # |3 - 1| over 2 channels
    assert float(t.dp_fg) == 0.0
    assert float(t.total) == pytest.approx((t.pos + t.neg) / 2 + (t.dp_fg + t.dp_bg) / 2)
    # labels fg, fg, bg: (0->1) positive foreground; the displacement difference should equal
    # the offset (0, 1): D(0) - D(1) = (0, 2) is off by 1 in one channel
    t = affinity_loss(b, disp, torch.tensor([[[1, 1, 0]]]), idx)
    assert float(t.pos) == pytest.approx(pos_bg / 2, rel=1e-5)
    assert float(t.dp_fg) == pytest.approx(1.0 / (2 + eps), rel=1e-5)
    assert float(t.dp_bg) == 0.0


def test_affinity_loss_gradient_reaches_the_boundary() -> None:
    idx = PairIndex.build(2)
    logits = torch.zeros(1, 4, 4, requires_grad=True)
    lab = torch.tensor([[[0, 0, 1, 1]] * 4])
    affinity_loss(torch.sigmoid(logits), None, lab, idx).total.backward()
    g = logits.grad[0]
    # negative pairs straddle the label edge: the loss pushes the boundary up there
    assert (g[:, 1:3] < 0).any()
    assert torch.isfinite(g).all()


def _two_regions() -> tuple[torch.Tensor, torch.Tensor]:
    b = torch.zeros(1, 8, 8)
    b[0, :, 4] = 1.0  # a wall at column 4
    s = torch.zeros(1, 1, 8, 8)
    s[0, 0, 3, 1] = 1.0  # score seed on the left
    return s, b


def test_random_walk_propagates_inside_and_stops_at_the_boundary() -> None:
    s, b = _two_regions()
    rw = random_walk(s, b, beta=10, exp_times=5, radius=3, method="dense")[0, 0]
    left, right = rw[:, :4], rw[:, 5:]
    assert (left > 1e-3).all()  # reached every pixel of the left region
    assert left.max() / left.min() < 1.5  # nearly uniform after 32 steps
    assert right.abs().max() < 1e-6  # nothing crosses the wall
    # without the wall the score spreads to the right side too
    free = random_walk(s, torch.zeros_like(b), beta=10, exp_times=5, radius=3)[0, 0]
    assert (free[:, 5:] > 1e-3).all()


def test_dense_repeated_squaring_equals_sparse_steps() -> None:
    torch.manual_seed(0)
    b = torch.rand(2, 7, 9) ** 3
    s = torch.rand(2, 2, 7, 9)
    dense = random_walk(s, b, beta=4, exp_times=4, radius=3, method="dense")
    sparse = random_walk(s, b, beta=4, exp_times=4, radius=3, method="sparse")
    torch.testing.assert_close(dense, sparse, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        random_walk(s, b, method="magic")


def test_ir_labels_confident_and_raw() -> None:
    cams = torch.tensor([[[[0.9, 0.2, 0.03]], [[0.1, 0.5, 0.01]]]])  # [1, 2, 1, 3]
    labels = torch.tensor([[1.0, 1.0]])
    conf = ir_labels_from_cams(cams, labels, "confident", conf_fg=0.3, conf_bg=0.05)
    assert conf[0, 0].tolist() == [1, 2, 0]
    conf = ir_labels_from_cams(cams, torch.tensor([[1.0, 0.0]]), "confident", 0.3, 0.05)
    assert conf[0, 0].tolist() == [1, IGNORE, 0]  # class 1 absent: 0.2 is in the ignore band
    raw = ir_labels_from_cams(cams, torch.tensor([[1.0, 0.0]]), "raw", cam_threshold=0.15)
    assert raw[0, 0].tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="ir_labels"):
        ir_labels_from_cams(cams, labels, "fuzzy")


def test_masks_from_random_walk_threshold_and_absent_classes() -> None:
    rw = torch.tensor([[[[4.0, 2.0], [0.5, 0.0]], [[1.0, 3.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    m = masks_from_random_walk(rw, torch.tensor([[1.0, 1.0]]), 0.25, (2, 2))
    assert m[0, 0].tolist() == [[True, False], [False, False]]
    assert m[0, 1].tolist() == [[False, True], [False, False]]
    m = masks_from_random_walk(rw, torch.tensor([[1.0, 0.0]]), 0.25, (2, 2))
    assert m[0, 0].tolist() == [[True, True], [False, False]] and not m[0, 1].any()
    assert not masks_from_random_walk(rw, torch.tensor([[0.0, 0.0]]), 0.25, (4, 4)).any()
    assert masks_from_random_walk(rw, torch.tensor([[1.0, 1.0]]), 0.25, (4, 4)).shape == (
        1,
        2,
        4,
        4,
    )
