"""NIH ChestX-ray14 box localization protocol (Wang et al., CVPR 2017).

Box generation (:func:`nih_boxes_from_heatmap`): the heatmap of one (image, class) pair, already
upsampled to the image size, is min-max normalised to [0, 255] (a constant map becomes all 0) and
binarised at each level of ``levels`` (default 60 and 180) with a strict ``>``; each 8-connected
component of a binary map gives one box around it. Boxes are in our continuous exclusive-end
convention (``lesionsweep.data.types``): a component spanning pixel columns ``a..b`` gives
``x0 = a, x1 = b + 1``, so predicted and GT boxes are compared in the same continuous space, and
areas have no "+1" (area = ``(x1 - x0) * (y1 - y0)``).

:class:`NihBoxEvaluator` computes the boxes and the counts below for a whole batch in one compiled
call (:func:`~lesionsweep.metrics.histkernels.nih_tallies`, tested equal to the per-map code of
:class:`~lesionsweep.metrics.reference.ReferenceNihBoxEvaluator`).

Scores (:class:`NihBoxEvaluator`):

* ``IoU = |P ∩ G| / |P ∪ G|``, ``IoBB = |P ∩ G| / |P|`` (overlap over the predicted box area).
* A GT box is *found* at ``T`` if some predicted box of its (image, class) map has IoBB > T (the
  ``iobb@T`` family) - or IoU > T (the ``iou@T`` family). The two criteria are reported as two
  separate families, as in Wang's tables. Accuracy per class = found GT boxes / GT boxes of that
  class (NIH has one box per (image, class) pair, so this equals the per-image accuracy);
  ``iobb@T`` is the mean over classes that have at least one GT box.
* **Two levels**: the headline keys use the union of the boxes of both levels (exact duplicates
  counted once), so a GT box is found if a box of either level matches it. Per-level results are
  reported as ``iobb_t60@T``, ``iou_t60@T``, ``afp_t60`` (and ``_t180``), means over classes.
* **AFP** (average false positives): for each evaluated pair, the predicted boxes that hit no GT
  box of that class, averaged over the evaluated pairs (images with a box of that class), then over
  classes. ``afp`` counts a box as a false positive if it does not overlap any GT box at all;
  ``afp@T`` (Wang's per-threshold rows) if its IoBB with every GT box is ``<= T``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .common import MetricInputError, as_box_list, check_maps, nanmean, to_numpy

__all__ = [
    "IOBB_THRESHOLDS",
    "IOU_THRESHOLDS",
    "NIH_LEVELS",
    "normalize_to_255",
    "nih_boxes_from_heatmap",
    "box_iou_iobb",
    "NihBoxEvaluator",
]

IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
NIH_LEVELS: tuple[int, ...] = (60, 180)


def normalize_to_255(heatmaps: Any) -> np.ndarray:
    """Min-max normalise each map of ``[N, H, W]`` to [0, 255] (float64); constant maps -> 0."""
    maps = to_numpy(heatmaps, np.float64)
    check_maps(maps, "NIH box accuracy", ndim=3)
    if maps.shape[0] == 0:
        return maps
    lo = maps.min(axis=(1, 2), keepdims=True)
    rng = maps.max(axis=(1, 2), keepdims=True) - lo
    const = rng == 0
    out = maps - lo
    out *= 255.0 / np.where(const, 1.0, rng)  # in place: the same two roundings as before
    out[const[:, 0, 0]] = 0.0
    return out


def _component_boxes(binary: np.ndarray) -> np.ndarray:
    """Continuous boxes ``[M, 4]`` around the 8-connected components of a uint8 0/1 image.

    The outer border of each component is a top-level contour of ``findContours(RETR_CCOMP)``
    (components inside holes included) and its ``boundingRect`` is the component's bounding box:
    the same boxes as ``connectedComponentsWithStats(connectivity=8)``, ~10x faster in OpenCV 5
    (tested against :func:`lesionsweep.metrics.reference.reference_component_boxes`).
    """
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    outer = hierarchy.reshape(-1, 4)[:, 3] < 0
    rects = [cv2.boundingRect(c) for c, top in zip(contours, outer, strict=True) if top]
    s = np.array(rects, dtype=np.float64).reshape(-1, 4)
    return np.stack([s[:, 0], s[:, 1], s[:, 0] + s[:, 2], s[:, 1] + s[:, 3]], axis=1)


def nih_boxes_from_heatmap(
    heatmap: Any, levels: Sequence[float] = NIH_LEVELS, normalized: bool = False
) -> dict[float, np.ndarray]:
    """Boxes around the connected regions of a heatmap thresholded at each level.

    Args:
        heatmap: float ``[H, W]`` at image resolution (any scale unless ``normalized``).
        levels: thresholds on the [0, 255] scale; a pixel is foreground if its value is ``>``.
        normalized: True if ``heatmap`` is already on the [0, 255] scale.

    Returns:
        ``{level: float64 [M, 4]}`` continuous ``(x0, y0, x1, y1)`` boxes, exclusive ends.
    """
    hm = to_numpy(heatmap, np.float64)
    check_maps(hm, "NIH box accuracy", ndim=2)
    norm = hm if normalized else normalize_to_255(hm[None])[0]
    return {lv: _component_boxes(np.greater(norm, lv).view(np.uint8)) for lv in levels}


def box_iou_iobb(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """IoU and IoBB between continuous boxes (no "+1"; area = ``(x1-x0) * (y1-y0)``).

    Args:
        pred: float ``[M, 4]`` predicted ``(x0, y0, x1, y1)``.
        gt: float ``[G, 4]`` ground-truth boxes, same convention.

    Returns:
        ``(iou, iobb)``, float64 ``[M, G]``; IoBB = intersection / predicted-box area. Zero-area
        denominators give 0.
    """
    p = to_numpy(pred, np.float64).reshape(-1, 4)[:, None, :]
    g = to_numpy(gt, np.float64).reshape(-1, 4)[None, :, :]
    iw = np.clip(np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]), 0, None)
    ih = np.clip(np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]), 0, None)
    inter = iw * ih
    area_p = np.clip(p[..., 2] - p[..., 0], 0, None) * np.clip(p[..., 3] - p[..., 1], 0, None)
    area_g = np.clip(g[..., 2] - g[..., 0], 0, None) * np.clip(g[..., 3] - g[..., 1], 0, None)
    union = area_p + area_g - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
        iobb = np.where(area_p > 0, inter / area_p, 0.0)
    return iou, iobb


class _Tally:
    """Per-class counters for one box set (one level, or the union of levels)."""

    def __init__(self, k: int, n_iobb: int, n_iou: int) -> None:
        self.gt = np.zeros(k, np.int64)
        self.pairs = np.zeros(k, np.int64)
        self.found_iobb = np.zeros((k, n_iobb), np.int64)
        self.found_iou = np.zeros((k, n_iou), np.int64)
        self.fp_iobb = np.zeros((k, n_iobb), np.int64)
        self.fp_any = np.zeros(k, np.int64)

    def add(self, c: int, pred: np.ndarray, gt: np.ndarray, t_iobb: np.ndarray, t_iou: np.ndarray):
        self.gt[c] += gt.shape[0]
        self.pairs[c] += 1
        if pred.shape[0] == 0:
            return
        iou, iobb = box_iou_iobb(pred, gt)  # [M, G]
        best_iobb_per_gt = iobb.max(axis=0)  # [G]
        best_iou_per_gt = iou.max(axis=0)
        self.found_iobb[c] += (best_iobb_per_gt[:, None] > t_iobb[None, :]).sum(axis=0)
        self.found_iou[c] += (best_iou_per_gt[:, None] > t_iou[None, :]).sum(axis=0)
        best_iobb_per_pred = iobb.max(axis=1)  # [M]
        self.fp_iobb[c] += (best_iobb_per_pred[:, None] <= t_iobb[None, :]).sum(axis=0)
        self.fp_any[c] += int((best_iobb_per_pred <= 0).sum())

    def acc(self, found: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.gt[:, None] > 0, found / self.gt[:, None], math.nan)

    def afp(self, fp: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            shape = (-1,) + (1,) * (fp.ndim - 1)
            return np.where(self.pairs.reshape(shape) > 0, fp / self.pairs.reshape(shape), math.nan)


def _fmt(t: float) -> str:
    return f"{t:g}"


class NihBoxEvaluator:
    """Wang et al.'s T(IoBB) / T(IoU) accuracy and AFP over GT-known (image, class) maps.

    Args:
        class_names: the K class names (keys ``iobb@T/<name>``).
        iobb_thresholds: T(IoBB) values. iou_thresholds: T(IoU) values.
        levels: the binarisation levels on the [0, 255] scale.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS,
        iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
        levels: Sequence[float] = NIH_LEVELS,
    ) -> None:
        self.class_names = tuple(class_names)
        self.iobb_thresholds = np.asarray(iobb_thresholds, dtype=np.float64)
        self.iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64)
        self.levels = tuple(levels)
        self.reset()

    def reset(self) -> None:
        k, a, b = len(self.class_names), len(self.iobb_thresholds), len(self.iou_thresholds)
        self._union = _Tally(k, a, b)
        self._per_level = {lv: _Tally(k, a, b) for lv in self.levels}

    def accumulate(self, heatmaps: Any, class_indices: Any, gt_boxes: Sequence[Any]) -> None:
        """Add GT-known maps.

        Args:
            heatmaps: float ``[N, H, W]`` at image resolution, any scale (each is normalised).
            class_indices: int ``[N]``, the class of each map.
            gt_boxes: N float arrays ``[G_i, 4]`` (G_i >= 1): the GT boxes of that class in that
                image, continuous ``(x0, y0, x1, y1)`` in the heatmap's pixels.
        """
        maps = to_numpy(heatmaps, np.float64)
        if maps.ndim != 3:
            check_maps(maps, "NIH box accuracy", ndim=3)
        cls, gts = self._check_pairs(maps.shape[0], class_indices, gt_boxes)
        if maps.shape[0] == 0:
            return
        gt = np.ascontiguousarray(np.concatenate(gts), dtype=np.float64)
        off = np.concatenate(([0], np.cumsum([b.shape[0] for b in gts]))).astype(np.int64)
        # numba-compiled kernel: imported here so `import lesionsweep.metrics` skips numba
        from .histkernels import nih_tallies

        status, f_iobb, f_iou, fp_iobb, fp_any = nih_tallies(
            np.ascontiguousarray(maps),
            np.asarray(self.levels, dtype=np.float64),
            gt,
            off,
            self.iobb_thresholds,
            self.iou_thresholds,
        )
        if status:  # NaN/inf: the check names what is wrong
            check_maps(maps, "NIH box accuracy", ndim=3)
        n_gt = np.diff(off)
        for s, tally in enumerate([*self._per_level.values(), self._union]):
            np.add.at(tally.gt, cls, n_gt)
            np.add.at(tally.pairs, cls, 1)
            np.add.at(tally.found_iobb, cls, f_iobb[:, s])
            np.add.at(tally.found_iou, cls, f_iou[:, s])
            np.add.at(tally.fp_iobb, cls, fp_iobb[:, s])
            np.add.at(tally.fp_any, cls, fp_any[:, s])

    def _check_pairs(
        self, n: int, class_indices: Any, gt_boxes: Sequence[Any]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """int64 ``[n]`` class indices and ``n`` float64 ``[G_i, 4]`` GT boxes (G_i >= 1)."""
        cls = to_numpy(class_indices, np.int64).reshape(-1)
        gts = as_box_list(gt_boxes, "NIH box accuracy", n)
        if cls.shape[0] != n:
            raise MetricInputError(f"NIH box accuracy: {cls.shape[0]} class indices for {n} maps")
        if cls.size and (cls.min() < 0 or cls.max() >= len(self.class_names)):
            raise MetricInputError(
                f"NIH box accuracy: class indices must be in [0, {len(self.class_names)}), "
                f"got {cls.min()}..{cls.max()}"
            )
        if any(g.shape[0] == 0 for g in gts):
            raise MetricInputError("NIH box accuracy: every map needs at least one GT box")
        return cls, gts

    def compute(self) -> dict[str, float]:
        """Flat results (accuracies in [0, 1]; NaN for classes without GT boxes).

        Keys: ``iobb@T`` and ``iobb@T/<class>`` for each T(IoBB); ``iou@T`` and ``iou@T/<class>``;
        ``afp``, ``afp/<class>``, ``afp@T`` and ``afp@T/<class>`` (T over T(IoBB));
        per level ``iobb_t<L>@T``, ``iou_t<L>@T``, ``afp_t<L>`` (class means only);
        ``nih_num_boxes`` (GT boxes evaluated).
        """
        out: dict[str, float] = {}
        u = self._union
        acc_iobb, acc_iou = u.acc(u.found_iobb), u.acc(u.found_iou)
        afp_iobb, afp_any = u.afp(u.fp_iobb), u.afp(u.fp_any)
        for j, t in enumerate(self.iobb_thresholds):
            out[f"iobb@{_fmt(t)}"] = nanmean(acc_iobb[:, j])
            for i, name in enumerate(self.class_names):
                out[f"iobb@{_fmt(t)}/{name}"] = float(acc_iobb[i, j])
        for j, t in enumerate(self.iou_thresholds):
            out[f"iou@{_fmt(t)}"] = nanmean(acc_iou[:, j])
            for i, name in enumerate(self.class_names):
                out[f"iou@{_fmt(t)}/{name}"] = float(acc_iou[i, j])
        out["afp"] = nanmean(afp_any)
        for i, name in enumerate(self.class_names):
            out[f"afp/{name}"] = float(afp_any[i])
        for j, t in enumerate(self.iobb_thresholds):
            out[f"afp@{_fmt(t)}"] = nanmean(afp_iobb[:, j])
            for i, name in enumerate(self.class_names):
                out[f"afp@{_fmt(t)}/{name}"] = float(afp_iobb[i, j])
        for lv, tally in self._per_level.items():
            tag = f"t{_fmt(lv)}"
            a_iobb, a_iou = tally.acc(tally.found_iobb), tally.acc(tally.found_iou)
            for j, t in enumerate(self.iobb_thresholds):
                out[f"iobb_{tag}@{_fmt(t)}"] = nanmean(a_iobb[:, j])
            for j, t in enumerate(self.iou_thresholds):
                out[f"iou_{tag}@{_fmt(t)}"] = nanmean(a_iou[:, j])
            out[f"afp_{tag}"] = nanmean(tally.afp(tally.fp_any))
        out["nih_num_boxes"] = float(u.gt.sum())
        return out
