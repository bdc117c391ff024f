"""Slow reference implementations of MaxBoxAccV2, PxAP and the NIH boxes (the pre-1.1 code).

They are the straightforward transcriptions of the definitions - one ``cv2.findContours`` on the
whole map at every distinct threshold (wsolevaluation's loop), one ``np.searchsorted`` per pixel
for the PxAP histograms, ``cv2.connectedComponentsWithStats`` for Wang's boxes - kept so that the
fast evaluators of :mod:`.wsol` and :mod:`.nih` are tested for equality against them on random
maps (``tests/unit/test_metrics_fast_equals_reference.py``) and timed side by side with them
(``benchmarks/bench_metrics.py``). Nothing in the training path uses this module.

Each reference evaluator subclasses the fast one and replaces only ``accumulate`` with the
per-map code, so ``compute()`` (units, keys) is shared and results compare with ``==``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .common import MetricInputError, as_box_list, check_maps, to_numpy
from .nih import NihBoxEvaluator
from .wsol import MaxBoxAccV2Evaluator, PxAPEvaluator, calculate_multiple_iou

__all__ = [
    "reference_mine_boxes",
    "ReferenceMaxBoxAccV2Evaluator",
    "ReferencePxAPEvaluator",
    "ReferenceNihBoxEvaluator",
    "reference_component_boxes",
    "reference_normalize_to_255",
]


def _reference_boxes_from_binary(binary: np.ndarray, multi_contour_eval: bool) -> np.ndarray:
    height, width = binary.shape[:2]
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64)
    if not multi_contour_eval:
        contours = [max(contours, key=cv2.contourArea)]
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    rects[:, 2] = np.minimum(rects[:, 0] + rects[:, 2], width - 1)
    rects[:, 3] = np.minimum(rects[:, 1] + rects[:, 3], height - 1)
    return rects


def reference_mine_boxes(
    scoremap_image: np.ndarray, thresholds: np.ndarray, multi_contour_eval: bool
) -> tuple[list[np.ndarray], list[int]]:
    """Boxes per threshold of a uint8 ``[H, W]`` map: a contour search of the whole map at every
    distinct binary image (wsolevaluation's ``compute_bboxes_from_scoremaps`` loop)."""
    present = np.bincount(scoremap_image.ravel(), minlength=256) > 0
    n_values_at_or_below = np.cumsum(present)
    mx = scoremap_image.max() if scoremap_image.size else np.uint8(0)
    cache: dict[int, np.ndarray] = {}
    boxes: list[np.ndarray] = []
    buffer = np.empty(scoremap_image.shape, dtype=bool)
    for t in np.asarray(thresholds, dtype=np.float64):
        thr = int(t * mx)
        key = int(n_values_at_or_below[min(thr, 255)])
        if key not in cache:
            np.greater(scoremap_image, thr, out=buffer)
            cache[key] = _reference_boxes_from_binary(buffer.view(np.uint8), multi_contour_eval)
        boxes.append(cache[key])
    return boxes, [len(b) for b in boxes]


class ReferenceMaxBoxAccV2Evaluator(MaxBoxAccV2Evaluator):
    """:class:`MaxBoxAccV2Evaluator` with the per-threshold whole-map kernel."""

    def accumulate(self, scoremaps: Any, gt_boxes: Sequence[Any]) -> None:
        maps = to_numpy(scoremaps)
        check_maps(maps, "MaxBoxAccV2", ndim=3, value_range=(0.0, 1.0))
        gts = as_box_list(gt_boxes, "MaxBoxAccV2", maps.shape[0])
        deltas = np.asarray(self.iou_thresholds, dtype=np.float64)[:, None] / 100.0
        images = (maps * 255).astype(np.uint8)
        for image, gt in zip(images, gts, strict=True):
            if gt.shape[0] == 0:
                raise MetricInputError("MaxBoxAccV2: every map needs at least one GT box")
            boxes, counts = reference_mine_boxes(image, self.thresholds, self.multi_contour_eval)
            ious = calculate_multiple_iou(np.concatenate(boxes), gt.astype(np.int64)).max(axis=1)
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            best = np.maximum.reduceat(ious, starts)  # [n_tau]
            self.num_correct += best[None, :] >= deltas
            self.count += 1


class ReferencePxAPEvaluator(PxAPEvaluator):
    """:class:`PxAPEvaluator` with one ``searchsorted`` over the bin edges per pixel."""

    def accumulate(self, scoremaps: Any, gt_masks: Any, ignore_masks: Any | None = None) -> None:
        maps = to_numpy(scoremaps)
        check_maps(maps, "PxAP", ndim=3, value_range=(0.0, 1.0))
        gt = to_numpy(gt_masks).astype(bool)
        if gt.shape != maps.shape:
            raise MetricInputError(f"PxAP: masks {gt.shape} do not match maps {maps.shape}")
        valid = np.ones_like(gt) if ignore_masks is None else ~to_numpy(ignore_masks).astype(bool)
        n = len(self.bin_edges) - 1

        def hist(values: np.ndarray) -> np.ndarray:
            idx = np.searchsorted(self.bin_edges, values, side="right") - 1
            return np.bincount(idx, minlength=n).astype(np.float64)

        self.gt_true_hist += hist(maps[gt & valid])
        self.gt_false_hist += hist(maps[~gt & valid])


def reference_component_boxes(binary: np.ndarray) -> np.ndarray:
    """Continuous boxes around the 8-connected components (``connectedComponentsWithStats``)."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    s = stats[1:n].astype(np.float64)  # label 0 is the background
    return np.stack([s[:, 0], s[:, 1], s[:, 0] + s[:, 2], s[:, 1] + s[:, 3]], axis=1).reshape(-1, 4)


def reference_normalize_to_255(heatmaps: Any) -> np.ndarray:
    """Min-max to [0, 255] per map of ``[N, H, W]`` with ``np.where`` (constant maps -> 0)."""
    maps = to_numpy(heatmaps, np.float64)
    check_maps(maps, "NIH box accuracy", ndim=3)
    if maps.shape[0] == 0:
        return maps
    lo = maps.min(axis=(1, 2), keepdims=True)
    rng = maps.max(axis=(1, 2), keepdims=True) - lo
    const = rng == 0
    return np.where(const, 0.0, (maps - lo) * (255.0 / np.where(const, 1.0, rng)))


class ReferenceNihBoxEvaluator(NihBoxEvaluator):
    """:class:`NihBoxEvaluator` with the ``np.where`` normalisation and Wang's boxes from
    ``connectedComponentsWithStats``."""

    def accumulate(self, heatmaps: Any, class_indices: Any, gt_boxes: Sequence[Any]) -> None:
        norm = reference_normalize_to_255(heatmaps)
        cls, gts = self._check_pairs(norm.shape[0], class_indices, gt_boxes)
        for hm, c, gt in zip(norm, cls, gts, strict=True):
            by_level = self._level_boxes(hm)
            for lv, boxes in by_level.items():
                self._per_level[lv].add(
                    int(c), boxes, gt, self.iobb_thresholds, self.iou_thresholds
                )
            union = np.concatenate(list(by_level.values()), axis=0)
            if union.shape[0]:
                union = np.unique(union, axis=0)
            self._union.add(int(c), union, gt, self.iobb_thresholds, self.iou_thresholds)

    def _level_boxes(self, norm: np.ndarray) -> dict[float, np.ndarray]:
        return {lv: reference_component_boxes((norm > lv).astype(np.uint8)) for lv in self.levels}
