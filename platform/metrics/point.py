"""Point localization accuracy (PYLON, Preechakul et al. 2021).

For each GT-known (image, class) pair: the class map, converted to probabilities and bilinearly
upsampled (``align_corners=False``) to the input size, gives its argmax pixel ``(row, col)``
(the first maximum in row-major order on ties). The order matters: PYLON upsamples
``sigmoid(logit map)``, and the sigmoid and bilinear upsampling do not commute, so the argmax of
the upsampled *raw* logits can fall on another pixel (methods.md section 3.3).
:func:`upsampled_argmax` computes PYLON's point exactly, in float64 and without the sigmoid's
saturation (where float32 ``sigmoid`` rounds every logit above about 17 to 1.0, the comparison is
made on the complement ``1 - p``; see there). The pair is correct if
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

__all__ = [
    "POINT_MAPS",
    "argmax_points",
    "bilinear_matrix",
    "upsampled_argmax",
    "points_in_boxes",
    "random_point_chance",
    "PointAccuracyEvaluator",
]

#: which map the point is taken on: ``"probability"`` (PYLON: the upsampled sigmoid of a logit
#: map) or ``"raw"`` (the upsampled map as the method returns it; this module's earlier default)
POINT_MAPS: tuple[str, ...] = ("probability", "raw")


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


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Interpolation matrix of 1-D linear resizing with ``align_corners=False`` (half-pixel).

    The convention of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
    and ``cv2.resize(INTER_LINEAR)`` for upsampling: output index ``j`` samples the input at
    ``s = (j + 0.5) * n_in / n_out - 0.5``, clamped to ``[0, n_in - 1]``, as
    ``(1 - f) * v[floor(s)] + f * v[floor(s) + 1]`` with ``f = s - floor(s)``.

    Args:
        n_in, n_out: input and output lengths (>= 1).

    Returns:
        float64 ``[n_out, n_in]``; each row sums to 1, so ``A @ v`` resizes a vector ``v``.
    """
    s = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    s = np.clip(s, 0.0, n_in - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = s - i0
    a = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(a, (rows, i0), 1.0 - f)
    np.add.at(a, (rows, i1), f)
    return a


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def upsampled_argmax(
    maps: Any, size: tuple[int, int], point_map: str = "probability"
) -> tuple[np.ndarray, np.ndarray]:
    """Argmax pixel of each map after bilinear upsampling (``align_corners=False``) to ``size``.

    With ``point_map="probability"`` (PYLON's point, for logit maps) the point is the argmax of
    ``up(sigmoid(map))``. It is computed in float64 without saturation: ``up`` is linear with
    rows summing to 1, so ``up(sigmoid(x)) = 1 - up(sigmoid(-x))``. Where some pixel has
    ``up(sigmoid(x)) > 1/2`` the maximum lies among those pixels and is found as the minimum of
    the complement ``up(sigmoid(-x))``, which float64 resolves down to about ``1e-308`` (logits up
    to about 700); otherwise directly as the maximum of ``up(sigmoid(x))``. With
    ``point_map="raw"`` it is the argmax of ``up(map)`` (float64). For maps that already are
    probabilities use ``"raw"``: upsampling commutes with the identity.

    Args:
        maps: float ``[N, h, w]`` (numpy or torch, any float dtype), finite.
        size: output ``(H, W)``.
        point_map: one of :data:`POINT_MAPS`.

    Returns:
        ``(rows, cols)``, int64 ``[N]`` each, in ``[0, H)`` and ``[0, W)``; ties resolve to the
        first maximum in row-major order.
    """
    if point_map not in POINT_MAPS:
        raise MetricInputError(
            f"point accuracy: point_map must be one of {POINT_MAPS}, got {point_map!r}"
        )
    m = to_numpy(maps, np.float64)
    check_maps(m, "point accuracy", ndim=3)
    n, h, w = m.shape
    height, width = int(size[0]), int(size[1])
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ah, aw = bilinear_matrix(h, height), bilinear_matrix(w, width)

    def up(v: np.ndarray) -> np.ndarray:
        return np.matmul(np.matmul(ah, v), aw.T).reshape(n, -1)  # [N, H*W]

    if point_map == "raw":
        flat = up(m).argmax(axis=1)
    else:
        p = up(np.exp(_log_sigmoid(m)))
        q = up(np.exp(_log_sigmoid(-m)))  # 1 - p, with full relative precision near p = 1
        # some p > 1/2 (q < 1/2): the maximum of p is the minimum of q, found at full precision
        flat = np.where((q < 0.5).any(axis=1), q.argmin(axis=1), p.argmax(axis=1))
    return (flat // width).astype(np.int64), (flat % width).astype(np.int64)


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
        """Add GT-known maps that are already at input resolution.

        Args:
            maps: float ``[N, H, W]`` at input resolution (probabilities, any monotone scale);
                the point is their argmax (:func:`argmax_points`).
            class_indices: int ``[N]``.
            gt_boxes: N float arrays ``[G_i, 4]`` (G_i >= 1), continuous boxes of that class.
        """
        m = to_numpy(maps)
        rows, cols = argmax_points(m)
        self.accumulate_points(rows, cols, class_indices, gt_boxes, m.shape[1], m.shape[2])

    def accumulate_maps(
        self,
        maps: Any,
        size: tuple[int, int],
        class_indices: Any,
        gt_boxes: Sequence[Any],
        point_map: str = "probability",
    ) -> None:
        """Add GT-known maps at map resolution: upsample to ``size`` and take the point there.

        Args:
            maps: float ``[N, h, w]``: logit maps for ``point_map="probability"`` (PYLON),
                any map for ``"raw"`` (see :func:`upsampled_argmax`).
            size: the input image ``(H, W)`` the boxes live in.
            class_indices: int ``[N]``.
            gt_boxes: N float arrays ``[G_i, 4]`` (G_i >= 1), continuous boxes of that class.
            point_map: one of :data:`POINT_MAPS`.
        """
        rows, cols = upsampled_argmax(maps, size, point_map)
        self.accumulate_points(rows, cols, class_indices, gt_boxes, int(size[0]), int(size[1]))

    def accumulate_points(
        self,
        rows: Any,
        cols: Any,
        class_indices: Any,
        gt_boxes: Sequence[Any],
        height: int,
        width: int,
    ) -> None:
        """Add predicted points.

        Args:
            rows, cols: int ``[N]`` pixel indices of the points.
            class_indices: int ``[N]``.
            gt_boxes: N float arrays ``[G_i, 4]`` (G_i >= 1), continuous boxes of that class.
            height, width: the image size in pixels (for the chance level).
        """
        r = to_numpy(rows, np.int64).reshape(-1)
        cls = to_numpy(class_indices, np.int64).reshape(-1)
        if cls.shape[0] != r.shape[0]:
            raise MetricInputError(f"point accuracy: {cls.shape[0]} classes for {r.shape[0]} maps")
        if cls.size and (cls.min() < 0 or cls.max() >= len(self.class_names)):
            raise MetricInputError(
                f"point accuracy: class indices must be in [0, {len(self.class_names)})"
            )
        boxes = as_box_list(gt_boxes, "point accuracy", r.shape[0])
        if any(b.shape[0] == 0 for b in boxes):
            raise MetricInputError("point accuracy: every map needs at least one GT box")
        hit = points_in_boxes(r, cols, boxes)
        chance = random_point_chance(boxes, height, width)
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
