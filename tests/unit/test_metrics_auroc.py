"""AUROC per class / macro / micro against hand computation (pair counting)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lesionsweep.metrics import AurocEvaluator, MetricInputError, auroc_micro, auroc_per_class


def _pairs_auc(y: np.ndarray, s: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), by counting all pairs."""
    pos, neg = s[y == 1], s[y == 0]
    d = pos[:, None] - neg[None, :]
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


SCORES = np.array(
    [
        [0.1, 0.2, 0.0],
        [0.4, 0.3, 0.6],
        [0.35, 0.9, 0.7],
        [0.8, 0.5, 0.05],
    ]
)
TARGETS = np.array([[0, 1, 0], [0, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=np.float32)


def test_per_class_and_macro_by_hand() -> None:
    per = auroc_per_class(SCORES, TARGETS)
    assert per[0] == pytest.approx(0.75)  # pos {.35, .8} vs neg {.1, .4}: 3 of 4 pairs
    assert per[1] == pytest.approx(0.5)  # pos {.2, .9} vs neg {.3, .5}: 2 of 4
    assert math.isnan(per[2])  # a single label value
    ev = AurocEvaluator(("a", "b", "c"))
    ev.accumulate(SCORES, TARGETS)
    r = ev.compute()
    assert r["auroc_macro"] == pytest.approx(0.625)
    assert r["auroc_num_classes"] == 2.0
    assert math.isnan(r["auroc/c"])
    assert r["auroc_micro"] == pytest.approx(_pairs_auc(TARGETS.ravel(), SCORES.ravel()))


def test_target_mask_excludes_unknown_labels() -> None:
    mask = np.ones_like(TARGETS)
    mask[1, 0] = 0  # drop the negative scored .4 in class a
    per = auroc_per_class(SCORES, TARGETS, mask)
    assert per[0] == 1.0
    keep = mask.ravel() > 0
    assert auroc_micro(SCORES, TARGETS, mask) == pytest.approx(
        _pairs_auc(TARGETS.ravel()[keep], SCORES.ravel()[keep])
    )


def test_ties_and_batches_and_torch_inputs() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=(30, 2)).astype(np.float64)  # many ties
    t = (rng.random((30, 2)) < 0.4).astype(np.float32)
    ev = AurocEvaluator(("a", "b"))
    ev.accumulate(torch.from_numpy(s[:10]), torch.from_numpy(t[:10]))
    ev.accumulate(s[10:], t[10:])
    r = ev.compute()
    for k, name in enumerate(("a", "b")):
        assert r[f"auroc/{name}"] == pytest.approx(_pairs_auc(t[:, k], s[:, k]))
    ev.reset()
    assert math.isnan(ev.compute()["auroc_macro"])


def test_bad_inputs() -> None:
    bad = SCORES.copy()
    bad[0, 0] = np.nan
    with pytest.raises(MetricInputError, match="AUROC"):
        auroc_per_class(bad, TARGETS)
    with pytest.raises(MetricInputError, match="0 or 1"):
        auroc_per_class(SCORES, TARGETS * 2)
    with pytest.raises(MetricInputError, match=r"\[N, K\]"):
        auroc_per_class(SCORES[:, :2], TARGETS)
