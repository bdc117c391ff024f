"""Point localization accuracy (PYLON, Preechakul et al. 2021).

For each GT-known (image, class) pair: the class map, converted to probabilities and bilinearly
upsampled (``align_corners=False``) to the input size, gives its argmax pixel ``(row, col)``
(the first maximum in row-major order on ties). The pair is correct if
``x0 <= col <= x1 and y0 <= row <= y1`` - inclusive on both ends, PYLON's rule - for ANY GT box of
that class in that image. Boxes are our continuous ``(x0, y0, x1, y1)`` in the input image's
pixels, compared as they are against integer pixel indices.

* ``point_acc_micro``: correct pairs / pairs (pair-weighted; PYLON's headline "weighted" number).
* ``point_acc_macro``: mean over classes (with at least one pair) of the per-class accuracy.
* Chance level (:func:`random_point_chance`): the probability that a pixel drawn uniformly from
  the ``H x W`` grid satisfies the same rule, i.e. (pixels inside the union of the pair's boxes,
  under the inclusive rule) / ``H * W``; for non-overlapping boxes this is the sum of their
  areas over the image area. Averaged like the accuracy (``point_acc_chance_micro`` / ``_macro``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .common import MetricInputError, as_box_list, check_maps, nanmean, to_numpy

__all__ = ["argmax_points", "points_in_boxes", "random_point_chance", "PointAccuracyEvaluator"]


def argmax_points(maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the maximum of each map.

    Args:
        maps: float ``[N, H, W]``.

    Returns:
        ``(rows, cols)``, int64 ``[N]`` each; ties resolve to the first maximum (row-major).
    """
    m = to_numpy(maps)
    check_maps(m, "point accuracy", ndim=3)
    n, _, w = m.shape
    flat = m.reshape(n, -1).argmax(axis=1) if n else np.zeros(0, np.int64)
    return (flat // w).astype(np.int64), (flat % w).astype(np.int64)


def points_in_boxes(rows: Any, cols: Any, gt_boxes: Sequence[Any]) -> np.ndarray:
    """Whether point i lies inside any box of ``gt_boxes[i]`` (inclusive on all four sides).

    Args:
        rows, cols: int ``[N]`` pixel indices.
        gt_boxes: N float arrays ``[G_i, 4]`` of continuous ``(x0, y0, x1, y1)``.

    Returns:
        bool ``[N]``.
    """
    r = to_numpy(rows, np.float64).reshape(-1)
    c = to_numpy(cols, np.float64).reshape(-1)
    boxes = as_box_list(gt_boxes, "point accuracy", r.shape[0])
    out = np.zeros(r.shape[0], dtype=bool)
    for i, b in enumerate(boxes):
        if b.shape[0]:
            inside = (b[:, 0] <= c[i]) & (c[i] <= b[:, 2]) & (b[:, 1] <= r[i]) & (r[i] <= b[:, 3])
            out[i] = bool(inside.any())
    return out


def random_point_chance(gt_boxes: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Expected accuracy of a uniformly random pixel, per item.

    Args:
        gt_boxes: N float arrays ``[G_i, 4]`` of continuous ``(x0, y0, x1, y1)``.
        height, width: the image size in pixels.

    Returns:
        float64 ``[N]``: fraction of the ``height x width`` pixels ``(row, col)`` that satisfy
        ``x0 <= col <= x1, y0 <= row <= y1`` for some box (union; 0 for an item without boxes).
    """
    boxes = as_box_list(gt_boxes, "point accuracy chance", len(gt_boxes))
    out = np.zeros(len(boxes), dtype=np.float64)
    total = float(height * width)
    for i, b in enumerate(boxes):
        if b.shape[0] == 0:
            continue
        # integer pixel index ranges satisfying the inclusive rule, clipped to the image
        c0 = np.clip(np.ceil(b[:, 0]), 0, width).astype(np.int64)
        c1 = np.clip(np.floor(b[:, 2]), -1, width - 1).astype(np.int64)
        r0 = np.clip(np.ceil(b[:, 1]), 0, height).astype(np.int64)
        r1 = np.clip(np.floor(b[:, 3]), -1, height - 1).astype(np.int64)
        if b.shape[0] == 1:
            out[i] = max(0, c1[0] - c0[0] + 1) * max(0, r1[0] - r0[0] + 1) / total
            continue
        mask = np.zeros((height, width), dtype=bool)
        for a0, a1, e0, e1 in zip(c0, c1, r0, r1, strict=True):
            if a1 >= a0 and e1 >= e0:
                mask[e0 : e1 + 1, a0 : a1 + 1] = True
        out[i] = mask.sum() / total
    return out


class PointAccuracyEvaluator:
    """PYLON point localization accuracy over GT-known (image, class) maps.

    Args:
        class_names: the K class names (keys ``point_acc/<name>``).
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = tuple(class_names)
        self.reset()

    def reset(self) -> None:
        k = len(self.class_names)
        self.pairs = np.zeros(k, np.int64)
        self.hits = np.zeros(k, np.int64)
        self.chance = np.zeros(k, np.float64)

    def accumulate(self, maps: Any, class_indices: Any, gt_boxes: Sequence[Any]) -> None:
        """Add GT-known maps.

        Args:
            maps: float ``[N, H, W]`` at input resolution (probabilities, any monotone scale).
            class_indices: int ``[N]``.
            gt_boxes: N float arrays ``[G_i, 4]`` (G_i >= 1), continuous boxes of that class.
        """
        m = to_numpy(maps)
        rows, cols = argmax_points(m)
        cls = to_numpy(class_indices, np.int64).reshape(-1)
        if cls.shape[0] != m.shape[0]:
            raise MetricInputError(f"point accuracy: {cls.shape[0]} classes for {m.shape[0]} maps")
        if cls.size and (cls.min() < 0 or cls.max() >= len(self.class_names)):
            raise MetricInputError(
                f"point accuracy: class indices must be in [0, {len(self.class_names)})"
            )
        boxes = as_box_list(gt_boxes, "point accuracy", m.shape[0])
        if any(b.shape[0] == 0 for b in boxes):
            raise MetricInputError("point accuracy: every map needs at least one GT box")
        hit = points_in_boxes(rows, cols, boxes)
        chance = random_point_chance(boxes, m.shape[1], m.shape[2])
        k = len(self.class_names)
        self.pairs += np.bincount(cls, minlength=k)
        self.hits += np.bincount(cls, weights=hit.astype(np.float64), minlength=k).astype(np.int64)
        self.chance += np.bincount(cls, weights=chance, minlength=k)

    def compute(self) -> dict[str, float]:
        """``point_acc_micro``, ``point_acc_macro``, ``point_acc/<class>``,
        ``point_acc_chance_micro``, ``point_acc_chance_macro`` (NaN where no pair)."""
        n = int(self.pairs.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            per_class = np.where(self.pairs > 0, self.hits / self.pairs, math.nan)
            chance_class = np.where(self.pairs > 0, self.chance / self.pairs, math.nan)
        out = {
            "point_acc_micro": float(self.hits.sum() / n) if n else math.nan,
            "point_acc_macro": nanmean(per_class),
            "point_acc_chance_micro": float(self.chance.sum() / n) if n else math.nan,
            "point_acc_chance_macro": nanmean(chance_class),
        }
        for name, v in zip(self.class_names, per_class, strict=True):
            out[f"point_acc/{name}"] = float(v)
        return out
