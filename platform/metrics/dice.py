"""Dice / F1 of thresholded probability maps against GT masks.

* Prediction: ``probability > threshold`` (strict, as WSMIS's ``sigmoid > 0.5``), on maps already
  at the mask resolution.
* :func:`dice_per_image`: ``2 TP / (2 TP + FP + FN)`` per map; a map with an empty GT mask **and**
  an empty prediction scores 1 (an empty GT with any predicted pixel scores 0).
* The evaluator's headline ``dice_per_image`` is the mean over **lesion-positive** maps only (GT
  mask non-empty), so a blank prediction scores 0 there and cannot beat a trained model through
  the negatives. ``dice_per_image_with_empty`` keeps the convention above over every map
  (negatives included: an empty prediction on an empty mask counts 1); it rewards blank maps
  on data with many negatives and is reported for comparison only.
* :func:`binary_f1_pooled`: TP, FP and FN summed over every pixel of every map of the split
  (negative images with empty masks included), then ``2 TP / (2 TP + FP + FN)`` - WSMIS
  ``BinaryF1``. If the whole split has no GT and no predicted pixel the pooled score is 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .common import MetricInputError, check_maps, to_numpy

__all__ = ["confusion_counts", "dice_per_image", "binary_f1_pooled", "DiceEvaluator"]


def _as_bool_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p = to_numpy(pred).astype(bool)
    g = to_numpy(gt).astype(bool)
    if p.shape != g.shape or p.ndim != 3:
        raise MetricInputError(
            f"Dice: predictions and GT masks must both be [N, H, W]; got {p.shape} and {g.shape}"
        )
    return p, g


def confusion_counts(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-map TP, FP, FN pixel counts.

    Args:
        pred: bool ``[N, H, W]`` predicted foreground. gt: bool ``[N, H, W]`` GT foreground.

    Returns:
        ``(tp, fp, fn)``, int64 ``[N]`` each.
    """
    p, g = _as_bool_pair(pred, gt)
    tp = (p & g).sum(axis=(1, 2), dtype=np.int64)
    fp = (p & ~g).sum(axis=(1, 2), dtype=np.int64)
    fn = (~p & g).sum(axis=(1, 2), dtype=np.int64)
    return tp, fp, fn


def _dice(tp: Any, fp: Any, fn: Any) -> np.ndarray:
    """``2 TP / (2 TP + FP + FN)`` elementwise; 1 where all three are 0."""
    den = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, 2.0 * tp / den, 1.0)


def dice_per_image(pred: Any, gt: Any) -> np.ndarray:
    """Dice of each map, float64 ``[N]`` (empty GT and empty prediction -> 1)."""
    return _dice(*confusion_counts(pred, gt))


def binary_f1_pooled(pred: Any, gt: Any) -> float:
    """Dice/F1 with TP/FP/FN pooled over all pixels of all maps (1 if all empty)."""
    tp, fp, fn = confusion_counts(pred, gt)
    return float(_dice(tp.sum(), fp.sum(), fn.sum()))


class DiceEvaluator:
    """Accumulates per-map and pooled Dice of ``probability > threshold`` predictions.

    Args:
        threshold: probability threshold (strict ``>``).
    """

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 <= threshold < 1.0:
            raise MetricInputError(f"Dice: threshold must be in [0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = 0
        self.dice_sum = 0.0  # over every map (empty-image convention)
        self.count = 0
        self.pos_sum = 0.0  # over maps with a non-empty GT mask
        self.pos_count = 0

    def accumulate(self, probabilities: Any, gt_masks: Any) -> None:
        """Add maps.

        Args:
            probabilities: float ``[N, H, W]`` in [0, 1], at the masks' resolution.
            gt_masks: bool ``[N, H, W]``.
        """
        p = to_numpy(probabilities)
        check_maps(p, "Dice", ndim=3, value_range=(0.0, 1.0))
        tp, fp, fn = confusion_counts(p > self.threshold, gt_masks)
        self.tp += int(tp.sum())
        self.fp += int(fp.sum())
        self.fn += int(fn.sum())
        d = _dice(tp, fp, fn)
        pos = (tp + fn) > 0
        self.dice_sum += float(d.sum())
        self.count += int(tp.shape[0])
        self.pos_sum += float(d[pos].sum())
        self.pos_count += int(pos.sum())

    def compute(self) -> dict[str, float]:
        """``dice_pooled``, ``dice_per_image`` (mean over lesion-positive maps; NaN without
        one) and ``dice_per_image_with_empty`` (mean over every map); NaN when nothing was
        added."""
        if self.count == 0:
            return {
                "dice_pooled": math.nan,
                "dice_per_image": math.nan,
                "dice_per_image_with_empty": math.nan,
            }
        pooled = float(_dice(np.asarray(self.tp), np.asarray(self.fp), np.asarray(self.fn)))
        pos = self.pos_sum / self.pos_count if self.pos_count else math.nan
        return {
            "dice_pooled": pooled,
            "dice_per_image": pos,
            "dice_per_image_with_empty": self.dice_sum / self.count,
        }
